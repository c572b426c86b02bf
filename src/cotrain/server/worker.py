"""`cotrain worker`: an executor without the HTTP server, for a fleet of GPU machines sharing
one PostgreSQL queue (claims use FOR UPDATE SKIP LOCKED). Its messages reach browsers through
Redis when REDIS_URL is set; they are always stored, so clients replay them either way. It opens
the database like every process (`cotrain.db.open_database`) and builds only the executor."""

from __future__ import annotations

import asyncio
import signal
import sys

from cotrain.db import open_database
from cotrain.server import logging_setup
from cotrain.server.executor import Executor
from cotrain.server.fanout import make_hub
from cotrain.server.settings import Settings


def settings_or_exit() -> Settings:
    """This process's settings; a bad variable (COTRAIN_WORKER_MEMORY, COTRAIN_GPUS, ...) stops the
    worker with its sentence and exit status 2, as `cotrain up` does, instead of a traceback."""
    try:
        return Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


async def run_worker(settings: Settings | None = None) -> None:
    settings = settings or settings_or_exit()
    logging_setup.configure(settings.log_format, settings.layout.system_logs, "worker")  # issue 14: one setup
    if settings.executor == "slurm":
        from cotrain.server.slurm.jobs import slurm_available

        why = slurm_available()
        if why:
            print(f"error: COTRAIN_EXECUTOR=slurm, but {why}", file=sys.stderr, flush=True)
            raise SystemExit(2)
    if settings.uses_embedded_database:
        print(
            "warning: DATABASE_URL is not set, so this worker uses the local SQLite file; point it at the "
            "server's PostgreSQL to share its queue.",
            file=sys.stderr,
        )
    engine, factory = await asyncio.to_thread(open_database, settings.database_url)  # and its migrations
    hub = make_hub(settings.redis_url, listen=False)
    await hub.start()
    executor = Executor(settings, factory, hub)
    await executor.start()
    logging_setup.announce(f"CoTrain worker {settings.worker_id} is waiting for sessions")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await executor.stop()  # running engines keep going; a restarted worker with the same id re-attaches
    await hub.stop()
    engine.dispose()
