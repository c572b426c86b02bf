"""What only a session's owner and admins may see: file-system paths, host names and tracebacks.

Errors, logs, events and configs shown to anyone else pass through `scrub` / `scrub_data` (the
decision who is who is `permissions.can_see_internals`). Absolute paths become `<path>`, this
machine's and the workers' host names become `<host>`, and a traceback shrinks to its last line.
"""

from __future__ import annotations

import re
import socket
from functools import cache
from typing import Any

# an absolute (or ~, ./, ../) path; not the path part of a URL, whose "/" follows a word character
PATH = re.compile(r"(?<![\w./~-])(?:~|\.{1,2})?/(?:[\w.@+=,-]+/?)+")
TRACEBACK_START = "Traceback (most recent call last):"
FRAME_LINE = re.compile(r'^\s+(File ".*", line \d+|\S.*)$')
# Keys whose values say where or on which machine something is: dropped for other people. Each is the one
# spelling that reaches `scrub_data` (the message wire form is camelCase, server/message_data.py; the
# `system`/`round` blocks and peer records carry no such key; tests/security/test_read_rule.py sees each):
#   "pid"       a training.status message: the engine process started (StatusData.pid)
#   "path"      a training.checkpoint message: where the checkpoint is (CheckpointData.path)
#   "dataPath"  a session's stored request: its dataConfig.dataPath (schemas.DataConfigIn.data_path)
# The session's own worker id, log source and checkpoint paths are left out by the service that shows them.
HIDDEN_KEYS = frozenset({"pid", "path", "dataPath"})


@cache
def _host_names() -> tuple[str, ...]:
    names = {socket.gethostname(), socket.getfqdn()}
    return tuple(sorted((n for n in names if n and n not in ("localhost",)), key=len, reverse=True))


def _scrub_paths(line: str) -> str:
    return PATH.sub(lambda match: "<path>" if len(match.group(0)) > 1 else match.group(0), line)


def scrub(text: str | None, hosts: tuple[str, ...] = ()) -> str | None:
    """`text` without paths, host names (this machine's and `hosts`) and traceback frames."""
    if text is None:
        return None
    out: list[str] = []
    in_traceback = False
    for line in text.splitlines():
        if line.strip() == TRACEBACK_START:
            in_traceback = True
            continue
        if in_traceback:
            if FRAME_LINE.match(line):
                continue
            in_traceback = False  # the exception line that ends a traceback
        out.append(_scrub_paths(line))
    result = "\n".join(out)
    for host in (*_host_names(), *hosts):
        if host:
            result = result.replace(host, "<host>")
    return result


def scrub_data(value: Any, hosts: tuple[str, ...] = ()) -> Any:
    """`value` (JSON-like) with hidden keys dropped and every string scrubbed."""
    if isinstance(value, str):
        return scrub(value, hosts)
    if isinstance(value, list):
        return [scrub_data(v, hosts) for v in value]
    if isinstance(value, dict):
        return {k: scrub_data(v, hosts) for k, v in value.items() if k not in HIDDEN_KEYS}
    return value


def worker_host(worker_id: str | None) -> tuple[str, ...]:
    """The host part of a worker id ("host:COTRAIN_HOME"), to scrub from that worker's output."""
    if not worker_id:
        return ()
    host = worker_id.split(":", 1)[0]
    return (host,) if host else ()
