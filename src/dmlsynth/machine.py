"""The facts of the machine a benchmark ran on, recorded beside its numbers.

Timings only mean something next to the machine that produced them: how many
CPUs it has, how many threads torch used, the torch version, the date, and
whether other processes were competing for the CPUs when the measurement
started. Each script in ``benchmarks/`` puts these columns in its results CSV
and its rendered block.
"""

from __future__ import annotations

import datetime
import functools
import os

# [project definition] A 1-minute load average at or above this share of the CPUs, taken
# before the measurement starts, means other processes were using the machine.
SHARED_LOAD_PER_CPU = 0.25


def describe_load(load: float, cpus: int) -> str:
    """``"machine shared (1-min load 2.31 at start)"`` or ``"machine idle (...)"``."""
    state = "machine shared" if load >= SHARED_LOAD_PER_CPU * cpus else "machine idle"
    return f"{state} (1-min load {load:.2f} at start)"


@functools.lru_cache(maxsize=None)  # read once per process: every run's environment records it
def cpu_signature() -> str:
    """The CPU as far as it decides float results: its model name and the vector instructions torch's kernels
    use (``AMD EPYC, AVX512``). The same params and seed give the same numbers on CPUs of one signature;
    on another, float reductions take other kernels and the numbers agree only approximately."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}"


def machine_facts() -> dict:
    """CPU count and signature, torch version and threads, today's date and the load: call before measuring."""
    import torch

    cpus = os.cpu_count() or 1
    return {
        "date": datetime.date.today().isoformat(),
        "cpus": cpus,
        "cpu": cpu_signature(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load": describe_load(os.getloadavg()[0], cpus),
    }


def facts_line(row) -> str:
    """One line for a rendered block from a results row holding :func:`machine_facts`' columns."""
    threads = int(row["torch_threads"])
    return (
        f"{row['date']}, torch {row['torch']}, {int(row['cpus'])} CPUs, "
        f"{threads} torch thread{'s' if threads != 1 else ''}, {row['load']}"
    )
