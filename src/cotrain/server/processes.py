"""The training processes the executor watches: a child it spawned, or a run it adopted after a
restart (started by an earlier server process, so only its pid and event stream are known)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from pathlib import Path

from cotrain.core.events import read_status

TRACEBACK_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|[A-Z]\w*Error)\b.*")


class ChildRun:
    """A process this executor spawned (own process group, so signals reach its children too)."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.pid = proc.pid
        self._waiter = asyncio.ensure_future(proc.wait())

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self, timeout: float) -> None:
        await asyncio.wait({self._waiter}, timeout=timeout)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


class AdoptedRun:
    """A run started before this server process; its exit code is read from status.json."""

    def __init__(self, pid: int, config_path: str, session_dir: Path):
        self.pid = pid
        self.config_path = config_path
        self.session_dir = session_dir

    @property
    def returncode(self) -> int | None:
        if engine_alive(self.pid, self.config_path):
            return None
        state = (read_status(self.session_dir) or {}).get("state")
        return {"completed": 0, "failed": 1, "interrupted": 143}.get(state or "", -signal.SIGKILL)

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(timeout)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def engine_alive(pid: int, config_path: str) -> bool:
    """True while `pid` is a live (not zombie) training process for `config_path`; a reused pid
    running something else counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and "cotrain.core.train" in cmdline and config_path in cmdline


def group_processes(pgid: int) -> list[tuple[int, str]]:
    """(pid, state) of every process of process group `pgid`, zombies included (none without /proc)."""
    members = []
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # after the command name: state, ppid, pgrp
            members.append((int(proc.name), fields[0]))
    return members


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return [pid for pid, state in group_processes(pgid) if state not in ("Z", "X")]


def end_process_group(pgid: int) -> list[int]:
    """SIGKILL what is left of a run's process group once its leader has exited; returns those pids.
    Called right after the exit is seen, before the group id could be reused."""
    strays = group_members(pgid)
    if strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    return strays


def meaningful_error(stderr_path: Path, max_bytes: int = 65536) -> str | None:
    """The line of a traceback that says what went wrong (`ValueError: ...`), from the end of a log."""
    try:
        with stderr_path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            lines = fh.read().decode(errors="replace").splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(lines):
        text = line.strip()
        if TRACEBACK_LINE.match(text) or text.startswith("error:"):
            return text[:500]
    return None


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"The training process was killed by {name}"
    return f"The training process exited with code {returncode}"
