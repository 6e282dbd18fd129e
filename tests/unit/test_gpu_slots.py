"""GPU slots: concurrent jobs get different GPUs, a killed job frees its slot, SLURM's assignment is kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dmlsynth import gpu_slots

ROOT = Path(__file__).resolve().parents[2]
# The tests count slots, not the GPUs of the machine they run on.
NO_DRIVER = "/nonexistent/driver/gpus"


@pytest.fixture(autouse=True)
def _give_back():
    yield
    gpu_slots.release()


def hold(slot_dir: Path, pool: int, gpus: int = 1, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A process that claims slots, prints its CUDA_VISIBLE_DEVICES and keeps them until killed."""
    code = (
        "import os, sys, time\n"
        "from dmlsynth import gpu_slots\n"
        f"gpu_slots.claim({pool}, {gpus}, {str(slot_dir)!r}, poll_seconds=0.05, driver_gpus={NO_DRIVER!r})\n"
        "print(os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
        "time.sleep(60)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    environment.update(env or {})
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), environment.get("PYTHONPATH", "")])
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=environment)
    return process, process.stdout.readline().strip()


def stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait(timeout=10)


def test_concurrent_jobs_get_different_gpus(tmp_path):
    first, devices_first = hold(tmp_path, pool=4)
    second, devices_second = hold(tmp_path, pool=4)
    try:
        environ: dict[str, str] = {}
        assert gpu_slots.claim(4, 1, tmp_path, environ, driver_gpus=NO_DRIVER) == [2]
        assert (devices_first, devices_second, environ["CUDA_VISIBLE_DEVICES"]) == ("0", "1", "2")
    finally:
        stop(first)
        stop(second)


def test_a_killed_job_frees_its_slot(tmp_path):
    process, devices = hold(tmp_path, pool=1)
    assert devices == "0"
    os.kill(process.pid, signal.SIGKILL)  # no cleanup code runs
    process.wait(timeout=10)
    environ: dict[str, str] = {}
    assert gpu_slots.claim(1, 1, tmp_path, environ, poll_seconds=0.05, driver_gpus=NO_DRIVER) == [0]
    assert environ["CUDA_VISIBLE_DEVICES"] == "0"


def test_a_job_waits_for_a_slot_held_elsewhere(tmp_path):
    process, _ = hold(tmp_path, pool=1)
    started = time.monotonic()
    try:
        threading.Timer(0.5, lambda: stop(process)).start()
        environ: dict[str, str] = {}
        assert gpu_slots.claim(1, 1, tmp_path, environ, poll_seconds=0.05, driver_gpus=NO_DRIVER) == [0]
        assert time.monotonic() - started >= 0.5
    finally:
        if process.poll() is None:
            stop(process)


def test_slots_index_the_gpus_snakemake_was_given(tmp_path):
    process, devices = hold(tmp_path, pool=4, env={"CUDA_VISIBLE_DEVICES": "4,5,6,7"})
    try:
        environ = {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
        assert gpu_slots.claim(4, 2, tmp_path, environ, driver_gpus=NO_DRIVER) == [1, 2]
        assert (devices, environ["CUDA_VISIBLE_DEVICES"]) == ("4", "5,6")
    finally:
        stop(process)


def test_nothing_changes_without_a_pool_for_cpu_jobs_or_under_slurm(tmp_path):
    for pool, gpus, environ in [
        (0, 1, {}),
        (4, 0, {}),
        (4, 1, {"SLURM_JOB_ID": "123", "CUDA_VISIBLE_DEVICES": "3"}),
    ]:
        before = dict(environ)
        assert gpu_slots.claim(pool, gpus, tmp_path, environ, driver_gpus=NO_DRIVER) == []
        assert environ == before
    assert not any(tmp_path.iterdir())


def test_impossible_requests_say_what_is_wrong(tmp_path):
    with pytest.raises(gpu_slots.GpuSlotError, match="needs 3 GPUs but --resources gpu=2"):
        gpu_slots.claim(2, 3, tmp_path, {}, driver_gpus=NO_DRIVER)
    with pytest.raises(gpu_slots.GpuSlotError, match="CUDA_VISIBLE_DEVICES lists 2 GPU"):
        gpu_slots.claim(4, 1, tmp_path, {"CUDA_VISIBLE_DEVICES": "0,1"}, driver_gpus=NO_DRIVER)
    driver = tmp_path / "driver"
    for bus in ("0000:01:00.0", "0000:02:00.0"):
        (driver / bus).mkdir(parents=True)
    with pytest.raises(gpu_slots.GpuSlotError, match="this machine has 2 NVIDIA GPU.*use --resources gpu=2"):
        gpu_slots.claim(4, 1, tmp_path, {}, driver_gpus=driver)
    gpu_slots.claim(2, 1, tmp_path, {}, driver_gpus=NO_DRIVER)
    with pytest.raises(RuntimeError, match="already holds GPU slots"):
        gpu_slots.claim(2, 1, tmp_path, {}, driver_gpus=NO_DRIVER)
