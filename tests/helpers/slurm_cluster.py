"""A throw-away single-node SLURM cluster on localhost, for testing the slurm profile.

Debian's slurm-wlm (slurmctld, slurmd, client tools) and munge, installed with apt-get if missing and
configured from scratch in a directory this harness owns (config, state, spool, pid and log files).
It starts munged (unless one already answers), slurmctld and slurmd in the foreground as its own
children, records their PIDs, and stops only those. The single node has fake GPUs (``gres.conf``
with ``File=/dev/null`` etc.) so jobs asking for ``--gpus=1`` are scheduled and see
``CUDA_VISIBLE_DEVICES``; a ``TaskProlog`` records what each job's tasks saw, for the tests.

Facts it relies on are in the project's ``notes/slurm_local.md``. Needs root (apt-get, munge user).

Client tools find the cluster through /etc/slurm/slurm.conf, a symlink to this harness's config that
exists only while the cluster runs (the slurm executor's job step strips ``SLURM_*`` variables, so
``SLURM_CONF`` alone does not reach ``srun`` inside a job). It refuses to replace a config it did not
write. The symlink must go when the cluster stops: with a config present but no controller, every
``snakemake`` start (the slurm executor plugin runs ``scontrol show config`` at import) waits ~10 s
for a timeout; without one, ``scontrol`` fails at once and tests that do not use SLURM pay nothing.

As a pytest fixture::

    @pytest.fixture(scope="session")
    def slurm(tmp_path_factory):
        with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
            yield cluster

By hand: ``python tests/helpers/slurm_cluster.py start DIR`` then ``eval $(python tests/helpers/slurm_cluster.py env DIR)``
and ``python tests/helpers/slurm_cluster.py stop DIR``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "munged"]
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# written by tests/slurm_cluster.py"

# The node advertises this shape (SlurmdParameters=config_overrides), about a typical GPU node,
# so the production profile's requests (cpus_per_gpu, mem_mb) fit unchanged. Nothing enforces it:
# no cgroups, and the demo's jobs are tiny.
NODE_CPUS = 16
NODE_MEMORY_MB = 64000


def slurm_installed() -> bool:
    return all(shutil.which(b) for b in BINARIES)


def install() -> None:
    """apt-get install the SLURM and munge packages if any binary is missing."""
    if slurm_installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError("installing SLURM needs root (apt-get install " + " ".join(PACKAGES) + ")")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def controller_listening(port: int = 6817) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (kill -0 says yes to zombies)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _exe_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode().rsplit("/", 1)[-1]
    except (FileNotFoundError, IndexError):
        return ""


class SlurmCluster:
    """Configure, start and stop a one-node cluster whose files live under ``root``."""

    def __init__(self, root: Path, *, gpus: int = 1, partitions=("cpu", "gpu")):
        self.root = Path(root).resolve()
        self.gpus = gpus
        self.partitions = list(partitions)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.gpu_record = self.root / "task_env.tsv"
        self.pid_file = self.root / "pids.json"
        self._procs: dict[str, subprocess.Popen] = {}

    # -- configuration -------------------------------------------------------------------------
    @property
    def env(self) -> dict[str, str]:
        """Variables client tools (and snakemake, and its jobs) need to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def write_config(self) -> None:
        for sub in ("etc", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.gpu_record.touch()
        self.gpu_record.chmod(0o666)
        prolog = self.root / "etc" / "task_prolog.sh"
        # Runs before every task of every job step with the task's environment: record what
        # a job saw. Its stdout is parsed by slurmd (export/unset/print lines), so write nothing there.
        prolog.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\t%s\\t%s\\n" "$SLURM_JOB_ID" "${{SLURM_STEP_ID:-}}" '
            f'"${{CUDA_VISIBLE_DEVICES:-}}" >> {self.gpu_record}\n'
        )
        prolog.chmod(0o755)
        devices = ",".join(["/dev/null", "/dev/zero", "/dev/full", "/dev/random"][: self.gpus])
        partitions = "\n".join(
            f"PartitionName={p} Nodes={self.node} Default={'YES' if i == 0 else 'NO'} "
            "MaxTime=INFINITE State=UP"
            for i, p in enumerate(self.partitions)
        )
        r = self.root
        self.conf.write_text(
            f"""{MARKER}
ClusterName=tissuelens-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=500
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
TaskProlog={prolog}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:{self.gpus} State=UNKNOWN
{partitions}
"""
        )
        (self.root / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={self.node} Name=gpu File={devices}\n"
        )

    # -- processes -----------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], **kwargs) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, **self.env),
            start_new_session=True,
            **kwargs,
        )
        log.close()
        self._procs[name] = proc
        self._save_pids()

    def _save_pids(self) -> None:
        self.pid_file.write_text(json.dumps({n: p.pid for n, p in self._procs.items()}))

    def _run(self, *argv: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=dict(os.environ, **self.env)
        )

    def _wait_for(self, what: str, check, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.root}/log")
            if check():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out waiting for {what}; see {self.root}/log")

    def _munge_works(self) -> bool:
        if not MUNGE_SOCKET.exists():
            return False
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
            check = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return cred.returncode == 0 and check.returncode == 0

    def start(self) -> "SlurmCluster":
        install()
        if controller_listening():
            raise RuntimeError("a slurmctld already listens on port 6817; stop it first")
        self.write_config()
        if not self._munge_works():
            if not MUNGE_KEY.exists():
                subprocess.run(["mungekey", "--create"], check=True)
                shutil.chown(MUNGE_KEY, "munge", "munge")
            MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_SOCKET.parent, "munge", "munge")
            self._spawn("munged", ["munged", "--foreground"], user="munge", group="munge")
            self._wait_for("munged", self._munge_works)
        self._link_system_conf()
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait_for("slurmctld", lambda: "UP" in self._run("scontrol", "ping").stdout)
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait_for("an idle node", self._node_idle)
        return self

    def _ours(self, path: Path) -> bool:
        """A config this harness wrote (now or in an earlier, crashed run), or a dangling link."""
        try:
            return MARKER in path.read_text()
        except FileNotFoundError:
            return path.is_symlink()

    def _link_system_conf(self) -> None:
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            if not self._ours(SYSTEM_CONF):
                raise RuntimeError(f"{SYSTEM_CONF} exists and was not written by this harness")
            SYSTEM_CONF.unlink()
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)

    def _unlink_system_conf(self) -> None:
        if SYSTEM_CONF.is_symlink() and Path(os.readlink(SYSTEM_CONF)) == self.conf:
            SYSTEM_CONF.unlink()

    def _node_idle(self) -> bool:
        state = self._run("sinfo", "-h", "-N", "-o", "%T").stdout.split()
        return bool(state) and all(s.rstrip("*") == "idle" for s in state)

    def stop(self) -> None:
        """Stop the daemons this harness started (and only those), youngest first."""
        pids = json.loads(self.pid_file.read_text()) if self.pid_file.exists() else {}
        expected = {"slurmd": "slurmd", "slurmctld": "slurmctld", "munged": "munged"}
        for name in ("slurmd", "slurmctld", "munged"):
            pid = pids.get(name)
            if pid is None or not _alive(pid) or _exe_name(pid) != expected[name]:
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                if name in self._procs:
                    self._procs[name].poll()  # reap our own child
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
            if name in self._procs:
                self._procs[name].wait(timeout=10)
        self._procs.clear()
        self._unlink_system_conf()
        self.pid_file.unlink(missing_ok=True)
        for stale in (self.root / "run").glob("*.pid"):
            stale.unlink()

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries for tests ---------------------------------------------------------------------
    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job slurmctld still remembers (MinJobAge=600): id -> scontrol's key=value fields."""
        out = self._run("scontrol", "show", "job", "--oneliner").stdout
        jobs = {}
        for line in out.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" in fields:
                jobs[fields["JobId"]] = fields
        return jobs

    def task_env(self) -> dict[str, set[str]]:
        """Job id -> the CUDA_VISIBLE_DEVICES values its job steps saw (from the TaskProlog)."""
        seen: dict[str, set[str]] = {}
        for line in self.gpu_record.read_text().splitlines():
            job, _step, cuda = (line.split("\t") + ["", ""])[:3]
            seen.setdefault(job, set()).add(cuda)
        return seen


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop", "env"):
        print("usage: slurm_cluster.py start|stop|env DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(Path(argv[1]))
    if argv[0] == "start":
        cluster.start()
        print(f"started; pids in {cluster.pid_file}; export SLURM_CONF={cluster.conf}")
    elif argv[0] == "stop":
        cluster.stop()
    else:
        print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
