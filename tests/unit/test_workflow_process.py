"""Jobs stop after their checkpoint when the Snakemake process that started them is gone."""

import subprocess
import sys

import pytest

from dmlsynth import workflow


def _gone_token() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    token = workflow.process_token(child.pid)
    child.wait()  # reaped: its pid names no process (or, if reused, one with another start time)
    return token


def test_a_job_of_a_living_workflow_goes_on(monkeypatch):
    monkeypatch.setenv(workflow.WORKFLOW_VARIABLE, workflow.process_token())
    assert workflow.workflow_alive() is True
    workflow.stop_if_workflow_gone("step 3")
    workflow.stop_when_workflow_gone()(None, 2, None)


def test_a_job_of_a_gone_workflow_stops_and_says_how_to_resume(monkeypatch):
    monkeypatch.setenv(workflow.WORKFLOW_VARIABLE, _gone_token())
    assert workflow.workflow_alive() is False
    with pytest.raises(workflow.WorkflowGone, match=r"stopped after step 3 .*snakemake --unlock"):
        workflow.stop_if_workflow_gone("step 3")
    with pytest.raises(workflow.WorkflowGone, match="stopped after epoch 2"):
        workflow.stop_when_workflow_gone()(None, 2, None)


def test_without_a_token_nothing_stops(monkeypatch):
    monkeypatch.delenv(workflow.WORKFLOW_VARIABLE, raising=False)
    assert workflow.workflow_alive() is None
    workflow.stop_if_workflow_gone("step 1")
