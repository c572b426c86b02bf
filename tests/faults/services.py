"""PostgreSQL and Redis instances of the fault tests' own, on spare loopback ports, so a test can stop
and restart them mid-run — never the machine's shared ones.

PostgreSQL runs as the `postgres` system user when the tests run as root (initdb refuses root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, missing_service, terminate, wait_until


def _pg_bin(name: str) -> str | None:
    for version_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version_dir / name).exists():
            return str(version_dir / name)
    return shutil.which(name)


class OwnPostgres:
    """A throwaway PostgreSQL cluster: `initdb` in a temp dir, trust auth, database `cotrain`."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.log = root / "postgres.log"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/cotrain"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done

    def init(self) -> OwnPostgres:
        initdb = _pg_bin("initdb")
        if initdb is None:
            missing_service("PostgreSQL's initdb is not installed (apt-get install postgresql)")
        self.root.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            self.root.chmod(0o755)
        self._run(str(initdb), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        return self

    def start(self) -> OwnPostgres:
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        if not getattr(self, "_created", False):
            self._run(_pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      "cotrain")
            self._created = True
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real outage."""
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        self._run(pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop", check=False)

    def running(self) -> bool:
        pg_ctl = _pg_bin("pg_ctl")
        assert pg_ctl is not None
        return self._run(pg_ctl, "-D", str(self.data), "status", check=False).returncode == 0


class OwnRedis:
    """A throwaway Redis on its own port, keeping nothing on disk."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OwnRedis:
        binary = shutil.which("redis-server")
        if binary is None:
            missing_service("redis-server is not installed (apt-get install redis-server)")
        self.root.mkdir(parents=True, exist_ok=True)
        log = (self.root / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [str(binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 20, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=20)
        self.proc = None


def outage(service: OwnPostgres | OwnRedis, seconds: float) -> float:
    """Stop `service`, keep it down `seconds`, start it again; returns the time it came back."""
    service.stop()
    time.sleep(seconds)
    service.start()
    return time.monotonic()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # not under pytest's tmp_path: its parents are private to root, and PostgreSQL runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="cotrain-faults-pg-"))
    pg = OwnPostgres(root).init().start()
    yield pg
    pg.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path_factory.mktemp("own-redis")).start()
    yield r
    r.stop()
