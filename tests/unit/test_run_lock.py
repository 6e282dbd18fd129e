"""One job trains a run folder at a time (dmlsynth.run_lock): a living holder refuses a second job by
name, a gone one (a crash, a SLURM time-out) is taken over so the run resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmlsynth import cluster, heartbeat, run_lock

# A holder in a process of its own: takes the lock, says so, then holds it until killed.
HOLDER = (
    "import sys, time\n"
    "from dmlsynth import run_lock\n"
    "with run_lock.run_lock(sys.argv[1], interval=0.1):\n"
    "    open(sys.argv[2], 'w').write('held')\n"
    "    time.sleep(60)\n"
)


def _holder(tmp_path: Path, slurm_job: str | None = None) -> subprocess.Popen:
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SLURM_JOB_ID", None)
    if slurm_job:
        env["SLURM_JOB_ID"] = slurm_job
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run"), str(ready)], env=env)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    return process


def test_a_second_job_is_refused_with_the_name_of_the_living_holder(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    holder = _holder(tmp_path, slurm_job="4242")
    try:
        with pytest.raises(run_lock.RunBusy, match=rf"being trained by another job: process {holder.pid} on {socket.gethostname()}, SLURM job 4242"):
            with run_lock.run_lock(tmp_path / "run"):
                pytest.fail("a second writer got in")
        assert json.loads((tmp_path / "run" / run_lock.LOCK_NAME).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_holder_is_taken_over_and_released_at_the_end(tmp_path):
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    assert json.loads(lock.read_text())["pid"] == holder.pid  # the crash left it behind
    with run_lock.run_lock(tmp_path / "run", interval=0.05) as mine:
        assert mine["pid"] == os.getpid() and json.loads(lock.read_text())["pid"] == os.getpid()
        time.sleep(0.2)
        assert json.loads(lock.read_text())["beat"] > 0  # it keeps beating while held
    assert not lock.exists()


def _elsewhere(lock: Path, slurm_job: str | None = None) -> dict:
    holder = {"process": "another-node:77:123", "host": "another-node", "pid": 77, "slurm_job_id": slurm_job, "since": "then"}
    lock.parent.mkdir(parents=True, exist_ok=True)
    heartbeat.write(lock, holder)
    return holder


def test_a_holder_on_another_host_is_judged_by_its_beat(tmp_path, monkeypatch):
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    holder = _elsewhere(lock)
    beating = heartbeat.Heartbeat(lock, holder, interval=0.05).start()
    try:
        with pytest.raises(run_lock.RunBusy, match="process 77 on another-node"):
            run_lock.acquire(tmp_path / "run", stale_after=1.0)
    finally:
        beating.stop(remove=False)
    # Its beat stopped (a crashed node): after stale_after without a change, the lock is taken over.
    assert run_lock.acquire(tmp_path / "run", stale_after=0.3)["pid"] == os.getpid()


@pytest.mark.parametrize("active", [True, False])
def test_a_holder_on_another_host_with_a_slurm_job_is_judged_by_squeue(tmp_path, monkeypatch, active):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    _elsewhere(lock, slurm_job="991")
    asked = []
    monkeypatch.setattr(cluster, "slurm_job_active", lambda job: asked.append(job) or active)
    if active:
        with pytest.raises(run_lock.RunBusy, match="SLURM job 991"):
            run_lock.acquire(tmp_path / "run", stale_after=30)
    else:  # (a beat would be waited for 30 s: squeue answered first)
        assert run_lock.acquire(tmp_path / "run", stale_after=30)["pid"] == os.getpid()
    assert asked == ["991"]


def test_the_same_slurm_job_started_again_takes_its_own_lock_over(tmp_path, monkeypatch):
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    _elsewhere(lock, slurm_job="991")
    monkeypatch.setenv("SLURM_JOB_ID", "991")
    monkeypatch.setattr(cluster, "slurm_job_active", lambda job: True)  # squeue sees this very job running
    assert run_lock.acquire(tmp_path / "run", stale_after=30)["slurm_job_id"] == "991"


def test_two_jobs_racing_for_a_gone_holders_lock_get_one_writer(tmp_path):
    lock = tmp_path / "run" / run_lock.LOCK_NAME
    lock.parent.mkdir()
    gone = {"process": f"{socket.gethostname()}:999999999:1", "pid": 999999999, "host": socket.gethostname()}
    heartbeat.write(lock, gone)
    results: list = []

    def take():
        try:
            results.append(run_lock.acquire(tmp_path / "run"))
        except run_lock.RunBusy as exc:
            results.append(exc)

    # Threads of one process share its identity; what matters is that the file names one holder.
    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert any(isinstance(r, dict) for r in results)


SQUEUE = "#!/bin/sh\n{body}\n"


@pytest.mark.parametrize(
    "body, expected",
    [
        ("echo RUNNING", True),
        ("echo PENDING", True),
        ("echo TIMEOUT", False),
        ("echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1", False),
        ("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2; exit 1", None),
    ],
)
def test_slurm_job_active_reads_squeue(tmp_path, monkeypatch, body, expected):
    (tmp_path / "squeue").write_text(SQUEUE.format(body=body))
    (tmp_path / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert cluster.slurm_job_active("12") is expected
