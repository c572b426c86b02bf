"""A real Slurm cluster on this host, for tests: munged on a private socket and key, slurmctld, and two
slurmd (nodes n1 and n2) on their own ports, each in its own UTS namespace with its node name as host
name, so `srun hostname` on a 2-node job prints n1 and n2. Every state, spool, log and pid file lies in
the cluster's folder; the daemons are children of the test process, stopped by `stop()` (and at
interpreter exit at the latest), together with every job step they started."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "srun", "unshare")
# marks the daemons (and the slurmstepd they fork) of one cluster, so stop() finds its own processes
MARKER = "COTRAIN_TEST_SLURM_CLUSTER"
PR_SET_PDEATHSIG = 1
SOCKET_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_slurm() -> str | None:
    """None when this machine can run the test cluster; else why not (one sentence)."""
    missing = [name for name in DAEMONS if _which(name) is None]
    if missing:
        return f"the Slurm test cluster needs {', '.join(missing)} (sudo apt-get install slurmctld slurmd " \
               "slurm-client munge, or `make slurm` as root)"
    if os.geteuid() != 0:
        return "the Slurm test cluster needs root (slurmd runs jobs as their user and each node has its own " \
               "UTS namespace for its host name)"
    return None


def _which(name: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login PATH may lack
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


class SlurmCluster:
    """A two-node Slurm cluster in `folder` (created). `start()` returns once both nodes are idle."""

    nodes = ["n1", "n2"]
    partition = "debug"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder).resolve()
        self.conf_path = self.folder / "slurm.conf"
        self.munge_socket = self.folder / "munge" / "munge.socket"
        self.log_dir = self.folder / "log"
        self._processes: list[subprocess.Popen[bytes]] = []
        self._names: list[str] = []
        self._exit_hook_registered = False

    @property
    def env(self) -> dict[str, str]:
        """What a client process (sbatch, scontrol, a worker) needs: merge it into its environment."""
        return {"SLURM_CONF": str(self.conf_path)}

    def start(self, timeout: float = 30) -> None:
        reason = missing_slurm()
        if reason:
            raise RuntimeError(reason)
        if len(str(self.munge_socket)) > SOCKET_PATH_MAX:
            raise RuntimeError(f"the cluster folder {self.folder} is too deep for munge's socket path: use a "
                               "shorter one")
        deadline = time.monotonic() + timeout
        for sub in ("munge", "log", "run", "state", "spool"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        # munged wants its socket's folder searchable by all, writable only by its owner
        (self.folder / "munge").chmod(0o711)
        if not self._exit_hook_registered:
            atexit.register(self.stop)
            self._exit_hook_registered = True
        try:
            self._start_munge(deadline)
            self._write_conf()
            self._spawn("slurmctld", [_exe("slurmctld"), "-D", "-f", str(self.conf_path)])
            self._wait(deadline, "slurmctld to answer", self._controller_up)
            for node in self.nodes:
                # unshare (without --fork) execs sh, which sets the host name and execs slurmd: one pid
                command = f'hostname {node} && exec "$0" -D -N {node} -f "$1"'
                self._spawn(f"slurmd-{node}", [_exe("unshare"), "--uts", "sh", "-c", command, _exe("slurmd"),
                                                str(self.conf_path)])
            self._wait(deadline, "both nodes to become idle", self._nodes_idle)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every daemon, the job steps they started and the jobs' processes (idempotent)."""
        if not self._processes:
            return
        ours = self._own_processes()
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self._processes):
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        for pid in ours:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        self._processes.clear()
        self._names.clear()

    def log(self, name: str) -> str:
        """A daemon's log (munged, slurmctld, slurmd-n1, slurmd-n2), for a failing test's message."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---- start-up steps

    def _start_munge(self, deadline: float) -> None:
        key = self.folder / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self._spawn("munged", [
            _exe("munged"), "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
            f"--pid-file={self.folder / 'run' / 'munged.pid'}", f"--seed-file={self.folder / 'munge' / 'seed'}",
            f"--log-file={self.log_dir / 'munged.log'}",
        ])
        self._wait(deadline, "munged's socket", self.munge_socket.exists)

    def _write_conf(self) -> None:
        f = self.folder
        user = pwd.getpwuid(os.geteuid()).pw_name
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=cotraintest",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmUser={user}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also holds a requeued job back (default 120 s): short, so a requeue reruns soon
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool' / '%n'}",
            f"SlurmctldPidFile={f / 'run' / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'run' / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd-%n.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # no cgroups in a container: processes are followed by their parent pids
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={f / 'jobcomp.txt'}",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            # schedule at once, and look at the queue every second (a requeued job is eligible again after
            # cred_expire, and only a periodic pass starts it: every 30-60 s by default)
            "SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobRequeue=1",
            # short timers: tests see a cancelled job gone in seconds and a finished one forgotten soon after
            "KillWait=2",
            "MinJobAge=2",
            "SlurmdTimeout=10",
            "SlurmctldTimeout=10",
            "InactiveLimit=0",
            "Waittime=0",
            "MessageTimeout=5",
        ]
        for node in self.nodes:
            lines.append(f"NodeName={node} NodeHostname={node} NodeAddr=127.0.0.1 Port={_free_port()} "
                         f"CPUs={cpus} State=UNKNOWN")
        lines.append(f"PartitionName={self.partition} Nodes={','.join(self.nodes)} Default=YES "
                     "MaxTime=INFINITE State=UP")
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env[MARKER] = str(self.folder)
        out = open(self.log_dir / f"{name}.out", "ab")  # noqa: SIM115 - the daemon keeps it open
        try:
            self._names.append(name)
            self._processes.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                    stdin=subprocess.DEVNULL, cwd=self.folder,
                                                    preexec_fn=_die_with_parent))
        finally:
            out.close()

    def _wait(self, deadline: float, what: str, ready: Callable[[], bool]) -> None:
        while time.monotonic() < deadline:
            for name, process in zip(self._names, self._processes, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(f"the Slurm test daemon {name} exited with {process.returncode} while "
                                       f"waiting for {what}: see {self.log_dir}")
            if ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}: see the logs in {self.log_dir}")

    def _client(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.update(self.env)
        return subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=10, check=False)

    def _controller_up(self) -> bool:
        result = self._client("scontrol", "ping")
        return result.returncode == 0 and "UP" in result.stdout

    def _nodes_idle(self) -> bool:
        result = self._client("sinfo", "--noheader", "--Node", "--format=%N %t")
        states = dict(line.split() for line in result.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in self.nodes)

    # ---- shutdown

    def _own_processes(self) -> list[int]:
        """Pids of this cluster's daemons, the slurmstepd they forked (marked by their environment) and
        every descendant of those (the jobs' processes), the test process excluded."""
        parents: dict[int, int] = {}
        marked: set[int] = set()
        marker = f"{MARKER}={self.folder}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = (entry / "stat").read_text()
                parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    marked.add(pid)
            except (OSError, ValueError, IndexError):
                continue
        ours = set(marked) | {p.pid for p in self._processes}
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in ours and pid not in ours:
                    ours.add(pid)
                    grew = True
        ours.discard(os.getpid())
        return sorted(ours)


def _die_with_parent() -> None:
    """In the forked child: SIGKILL it when the test process dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _exe(name: str) -> str:
    path = _which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: sudo apt-get install slurmctld slurmd slurm-client munge")
    return path
