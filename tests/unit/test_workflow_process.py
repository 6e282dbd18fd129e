"""Jobs stop after their checkpoint when the Snakemake process that started them is gone."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dmlsynth import heartbeat, workflow


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


# A stand-in for a job: started by a shell, as Snakemake starts jobs; says when it is ready, then would
# write its output 30 s later.
JOB = (
    "import sys, time\n"
    "from dmlsynth import workflow\n"
    "{setup}\n"
    "open(sys.argv[1], 'w').write('ready')\n"
    "time.sleep(30)\n"
    "open(sys.argv[2], 'w').write('written after its shell was gone')\n"
)


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_the_shell_of_a_job(tmp_path, setup: str, token: str | None):
    ready, output = tmp_path / "ready", tmp_path / "output"
    script = tmp_path / "job.py"
    script.write_text(JOB.format(setup=setup))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(workflow.WORKFLOW_VARIABLE, None)
    if token:
        env[workflow.WORKFLOW_VARIABLE] = token
    # `; true` keeps bash as the job's parent (a lone command would be exec'd in its place).
    shell = subprocess.Popen(["bash", "-c", f"{shlex.quote(sys.executable)} {script} {ready} {output}; true"], env=env)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline and shell.poll() is None
        time.sleep(0.05)
    (job,) = _children(shell.pid)
    os.kill(shell.pid, signal.SIGKILL)
    shell.wait()
    deadline = time.monotonic() + 5
    while _alive(job) and time.monotonic() < deadline:
        time.sleep(0.05)
    return job, output


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("setup", ["workflow.die_with_parent()", "workflow.die_with_parent(poll_seconds=0.1, use_prctl=False)"], ids=["prctl", "watcher"])
def test_a_job_ends_when_its_shell_is_killed(tmp_path, setup):
    job, output = _kill_the_shell_of_a_job(tmp_path, setup, workflow.process_token())
    assert not _alive(job), "the job outlived its shell"
    assert not output.exists()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_command_typed_by_hand_is_left_alone(tmp_path):
    job, output = _kill_the_shell_of_a_job(tmp_path, "workflow.die_with_parent()", token=None)
    try:
        assert _alive(job)  # not started by a workflow: closing its terminal is the user's business
    finally:
        os.kill(job, signal.SIGKILL)


def test_a_job_step_keeps_the_main_process_it_came_from(tmp_path):
    # The main Snakemake exports its identity and heartbeat; sbatch hands them to the job, whose own
    # Snakemake (a job step, not the main process) must not put itself in their place.
    main: dict[str, str] = {}
    workflow.announce(True, tmp_path, main)
    assert main[workflow.WORKFLOW_VARIABLE] == workflow.process_token() == main[workflow.SUPERVISOR_VARIABLE]
    assert Path(main[workflow.HEARTBEAT_VARIABLE]).parent == (tmp_path / workflow.HEARTBEAT_FOLDER).resolve()
    assert heartbeat.read(main[workflow.HEARTBEAT_VARIABLE])["workflow"] == workflow.process_token()
    step = {**main, workflow.WORKFLOW_VARIABLE: "login-node:4711:99"}
    workflow.announce(False, tmp_path, step)
    assert step[workflow.WORKFLOW_VARIABLE] == "login-node:4711:99"
    assert step[workflow.HEARTBEAT_VARIABLE] == main[workflow.HEARTBEAT_VARIABLE]
    assert step[workflow.SUPERVISOR_VARIABLE] == workflow.process_token()
    # An executor that passed nothing on: the job step is all the job can watch.
    alone: dict[str, str] = {}
    workflow.announce(False, tmp_path, alone)
    assert alone[workflow.WORKFLOW_VARIABLE] == workflow.process_token() and workflow.HEARTBEAT_VARIABLE not in alone
    workflow._heartbeats.pop(main[workflow.HEARTBEAT_VARIABLE]).stop()
    assert not Path(main[workflow.HEARTBEAT_VARIABLE]).exists()  # a workflow that ends removes its heartbeat


def test_a_job_on_another_host_watches_the_workflows_heartbeat(tmp_path):
    path = tmp_path / "beat"
    elsewhere = "login-node:4711:99"  # another host: /proc cannot tell
    assert workflow.workflow_alive(elsewhere, heartbeat=str(path)) is None  # never seen: unknown, goes on
    beating = heartbeat.Heartbeat(path, {"workflow": elsewhere}, interval=0.05).start()
    assert workflow.workflow_alive(elsewhere, heartbeat=str(path)) is True
    beating.stop(remove=True)  # the workflow ended and removed its heartbeat
    assert workflow.workflow_alive(elsewhere, heartbeat=str(path)) is False


def test_a_heartbeat_that_stopped_changing_means_the_workflow_is_gone(tmp_path):
    path, now = tmp_path / "beat", [0.0]
    heartbeat.write(path, {"beat": 1})
    watch = heartbeat.HeartbeatWatch(path, stale_after=100, clock=lambda: now[0])
    assert watch.look() is True
    now[0] = 90
    assert watch.look() is True  # within stale_after of the first sight, by the watcher's own clock
    heartbeat.write(path, {"beat": 2})
    now[0] = 150
    assert watch.look() is True  # it beat: the 100 s count again from here
    now[0] = 251
    assert watch.look() is False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_cluster_job_whose_workflow_is_no_ancestor_starts(tmp_path):
    # On a SLURM node the job descends from its job step's Snakemake (the supervisor), never from the
    # workflow's main process: a check of the main process as its ancestor would end every job at start.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ready, output = tmp_path / "ready", tmp_path / "output"
        script = tmp_path / "job.py"
        script.write_text(JOB.format(setup="workflow.die_with_parent()").replace("time.sleep(30)", "time.sleep(0)"))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        env[workflow.WORKFLOW_VARIABLE] = workflow.process_token(other.pid)  # alive, not an ancestor
        env[workflow.SUPERVISOR_VARIABLE] = workflow.process_token()  # this test: the shell's parent
        result = subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)} {script} {ready} {output}; true"], env=env, timeout=60)
        assert result.returncode == 0 and output.exists(), "the job was ended at start"
    finally:
        other.kill()
        other.wait()
