"""The container health check of the CoTrain image (Dockerfile HEALTHCHECK, compose healthchecks).

One image runs the server (`cotrain up`), workers (`cotrain worker`) and volunteer peers, so the check
asks what this container runs (the `cotrain` process in /proc, or the first argument: `api` or `worker`):

- the server: `GET /health` on its port answers 200 (503 names a failed component);
- a worker, which serves no HTTP: its row in the `workers` table has a heartbeat younger than
  COTRAIN_HEARTBEAT_TIMEOUT, the age at which the server hands its sessions to another worker;
- anything else (a volunteer peer, a one-shot command): healthy while it runs.

Exit status 0 is healthy, 1 is not; the reason is one line on stdout, which `docker inspect` shows.
Standard library only for the server's check, so a slow import never fails a probe.
"""

from __future__ import annotations

import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
TIMEOUT_S = 8.0


def cotrain_command() -> list[str]:
    """The arguments after `cotrain` of the first CoTrain process found, PID 1 first; [] if none."""
    pids = sorted((int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()), key=lambda pid: pid != 1)
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for index, arg in enumerate(argv[:3]):
            if Path(arg).name == "cotrain" and index + 1 < len(argv) and argv[index + 1]:
                return [a for a in argv[index + 1 :] if a]
    return []


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in `args`."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def check_server(args: list[str]) -> tuple[bool, str]:
    """`GET /health` on the server's port (https when it serves TLS: a loopback probe, so unverified)."""
    given = option(args, "--port")
    port = str(DEFAULT_PORT) if given is None else given
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return False, f"--port {port!r} is not a port number (1-65535); give the port `cotrain up` listens on"
    tls = option(args, "--ssl-certfile") is not None
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/health"
    context = ssl._create_unverified_context() if tls else None  # noqa: S323 - our own process on loopback
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:
            return True, f"{url} answered {answer.status}"
    except urllib.error.HTTPError as exc:
        detail = exc.read(4000).decode(errors="replace")
        try:
            detail = str(json.loads(detail).get("detail", detail))  # 503: "Not ready; failed: ..."
        except (ValueError, AttributeError):
            pass
        return False, f"{url} answered {exc.code}: {detail}"
    except (OSError, urllib.error.URLError) as exc:
        return False, f"{url} did not answer: {exc}"


def check_worker() -> tuple[bool, str]:
    """This worker's heartbeat in the shared database, as the server judges it."""
    from sqlalchemy import select

    from cotrain.db import make_engine
    from cotrain.server.orm import Worker
    from cotrain.server.settings import Settings

    try:
        settings = Settings()
    except ValueError as exc:
        return False, f"settings: {exc}"
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            beat = connection.execute(select(Worker.heartbeat_at).where(Worker.id == settings.worker_id)).scalar()
    except Exception as exc:
        return False, f"the database does not answer ({exc.__class__.__name__})"
    finally:
        engine.dispose()
    if beat is None:
        return False, f"worker {settings.worker_id} has no heartbeat in the database yet"
    age = time.time() - beat
    limit = settings.heartbeat_timeout_s
    if age > limit:
        return False, f"worker {settings.worker_id} last beat {age:.0f} s ago (limit {limit:g} s)"
    return True, f"worker {settings.worker_id} beat {age:.0f} s ago"


def main(argv: list[str]) -> int:
    role = argv[0] if argv else None
    command = cotrain_command()
    if role == "api" or (role is None and command[:1] == ["up"]):
        healthy, why = check_server(argv[1:] if role == "api" else command)
    elif role == "worker" or (role is None and command[:1] == ["worker"]):
        healthy, why = check_worker()
    elif role is None:
        healthy, why = True, f"nothing to probe for `cotrain {' '.join(command[:1]) or '(not running)'}`"
    else:
        healthy, why = False, f"unknown role {role!r}; use api [--port N] [--ssl-certfile F] or worker"
    print(("healthy: " if healthy else "unhealthy: ") + why, flush=True)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
