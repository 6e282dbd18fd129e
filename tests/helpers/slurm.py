"""A one-node SLURM cluster on localhost for the tests (Debian's slurm-wlm and munge).

munged, slurmctld and slurmd run in the foreground as children of the test, with their
configuration, keys, state and logs in one temporary folder and ports of their own, so a SLURM
the machine may already run is not touched; :meth:`LocalSlurm.stop` ends exactly the daemons it
started, by their PIDs. Commands reach this cluster through ``SLURM_CONF`` and, inside its jobs
(the SLURM plugin's job step drops every ``SLURM_*`` variable before it calls ``srun``; a real
cluster's nodes read /etc/slurm/slurm.conf), through wrappers first on ``PATH`` that set it
(:attr:`LocalSlurm.env`). No accounting (no slurmdbd): ``sacct`` answers "Slurm accounting storage
is disabled".
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
NODE = "dmlsynth-node"
# A partition whose node has a fake GPU (GRES) of this model; sbatch accepts --gpus=<model>:1 for it.
GPU_PARTITION, GPU_MODEL = "gpu", "fake"
# Daemons live in sbin, which a user's PATH may lack.
_SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])


def which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH)


def missing() -> list[str]:
    """The SLURM and munge programs that are not installed."""
    return [name for name in (*DAEMONS, *COMMANDS) if which(name) is None]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalSlurm:
    """A one-node cluster in ``root``; ``cpus`` and ``memory_mb`` are what the node says it has."""

    def __init__(self, root: Path, cpus: int | None = None, memory_mb: int = 64000, min_job_age_s: int | None = None):
        self.root = root
        # More CPUs than the machine may have (config_overrides): jobs of seconds wait for SLURM, not for a core.
        self.cpus = cpus or max(4, os.cpu_count() or 4)
        self.memory_mb = memory_mb
        # None: Slurm's default (300 s), as a user's cluster has it.
        self.min_job_age_s = min_job_age_s
        self.conf = root / "slurm.conf"
        self.bin = root / "bin"
        self.env = {"SLURM_CONF": str(self.conf), "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self._daemons: list[tuple[str, subprocess.Popen]] = []

    def _config(self) -> str:
        user, host, root = getpass.getuser(), socket.gethostname().split(".")[0], self.root
        return f"""\
ClusterName=dmlsynth-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
ReturnToService=2
{'' if self.min_job_age_s is None else f"MinJobAge={self.min_job_age_s}"}
KillWait=2
GresTypes=gpu
InactiveLimit=0
MpiDefault=none
NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} Gres=gpu:{GPU_MODEL}:1 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={NODE} MaxTime=INFINITE State=UP
"""

    def _start(self, name: str, *args: str) -> None:
        out = open(self.root / "log" / f"{name}.out", "w")
        process = subprocess.Popen([which(name), *args], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self._daemons.append((name, process))

    def start(self, timeout: float = 60) -> "LocalSlurm":
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(mode=0o755, parents=True, exist_ok=True)
        munge = self.root / "munge"
        subprocess.run([which("mungekey"), "--create", "--keyfile", str(munge / "munge.key")], check=True, capture_output=True)
        self._start(
            "munged", "--foreground", "--force", f"--socket={munge}/munge.socket", f"--key-file={munge}/munge.key",
            f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed", f"--log-file={munge}/munged.log",
        )  # fmt: skip
        self._wait(lambda: (munge / "munge.socket").exists(), timeout, "munged to open its socket")
        self.conf.write_text(self._config())
        # A fake GPU (no device file): the node offers one GRES gpu of model GPU_MODEL to the GPU partition's
        # jobs; the default partition 'debug' shares the node, but its jobs ask for no GPU.
        (self.root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu Type={GPU_MODEL} File=/dev/null\n")
        self.bin.mkdir(exist_ok=True)
        for name in (*COMMANDS, "sacct"):
            if which(name):
                wrapper = self.bin / name
                wrapper.write_text(f'#!/bin/sh\nSLURM_CONF={self.conf} exec {which(name)} "$@"\n')
                wrapper.chmod(0o755)
        self._start("slurmctld", "-D", "-f", str(self.conf))
        self._start("slurmd", "-D", "-f", str(self.conf), "-N", NODE)
        self._wait(lambda: set(self.query("sinfo", "-h", "-N", "-o", "%T").split()) == {"idle"}, timeout, "the node to be idle")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self._daemons:
                if process.poll() is not None:
                    raise RuntimeError(f"{name} ended ({process.returncode}) while waiting for {what}:\n{self.logs()}")
            try:
                if ready():
                    return
            except subprocess.CalledProcessError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"waited {timeout} s for {what}:\n{self.logs()}")

    def query(self, *command: str) -> str:
        """A SLURM command's output, run against this cluster."""
        return subprocess.run(
            [which(command[0]), *command[1:]], capture_output=True, text=True, check=True, timeout=60,
            env={**os.environ, **self.env},
        ).stdout  # fmt: skip

    def jobs(self) -> list[dict[str, str]]:
        """Every job the controller remembers (MinJobAge): id, comment (the plugin's
        ``rule_<rule>_wildcards_...``), state, time limit, memory, start and end time."""
        keys = ("id", "comment", "state", "time_limit", "memory", "start", "end")
        lines = self.query("squeue", "--states=all", "--noheader", "--format=%i|%k|%T|%l|%m|%S|%e").splitlines()
        return sorted((dict(zip(keys, line.split("|"))) for line in lines if line.strip()), key=lambda j: int(j["id"]))

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} (last 20 lines)\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:])
            for path in sorted((self.root / "log").glob("*"))
        )

    def stop(self) -> None:
        """Cancel this cluster's jobs, then end the daemons this object started, by PID."""
        try:
            self.query("scancel", "--user", getpass.getuser())
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
            pass
        for name, process in reversed(self._daemons):
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait()
        self._daemons.clear()
