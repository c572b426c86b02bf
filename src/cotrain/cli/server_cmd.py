"""`cotrain up` (the whole platform on embedded defaults) and `cotrain worker` (an executor
that shares a PostgreSQL queue with the server)."""

from __future__ import annotations

import typer


def up(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    api_only: bool = typer.Option(False, "--api-only", help="Serve the API and WebSocket without the web UI."),
    example: bool = typer.Option(
        False, "--example", help="Create an example session if there is none yet (a tiny run)."
    ),
    ssl_certfile: str = typer.Option(
        None, "--ssl-certfile", help="Serve HTTPS and WSS with this certificate (PEM, with its chain); needs "
        "--ssl-keyfile."),
    ssl_keyfile: str = typer.Option(None, "--ssl-keyfile", help="The private key (PEM) of --ssl-certfile."),
) -> None:
    """Start the server: web UI, REST API, WebSocket, database (SQLite under COTRAIN_HOME unless
    DATABASE_URL is set), queue, executor and the DHT node."""
    import importlib.util
    import logging
    import os

    import uvicorn

    from cotrain.server import logging_setup
    from cotrain.server.settings import Settings
    from cotrain.server.tls_files import TlsFileError, check_tls_files

    try:  # a bad variable (COTRAIN_QUOTA_*, COTRAIN_WORKER_MEMORY, ...) is one sentence, not a traceback
        settings = Settings()
        tls = check_tls_files(ssl_certfile, ssl_keyfile)
    except (ValueError, TlsFileError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    # issue 14, logs: uvicorn's lines go through the same handlers as ours (log_config=None below)
    from uvicorn.config import LOG_LEVELS

    logging_setup.configure(settings.log_format, settings.layout.system_logs, "server",
                            LOG_LEVELS.get(log_level.lower(), logging.INFO))
    if example:
        os.environ["COTRAIN_EXAMPLE_SESSION"] = "1"  # read by the app the factory builds
    with_ui = not api_only and importlib.util.find_spec("cotrain.ui.app") is not None
    factory = "cotrain.ui.app:create_app" if with_ui else "cotrain.server.app:create_app"
    where = f"{'https' if tls else 'http'}://{host}:{port}"
    if with_ui:
        os.environ.setdefault("COTRAIN_UI_URL", where)  # the first start prints a sign-in link to it
    banner = f"CoTrain server on {where} ({'web UI at ' + where + '/, ' if with_ui else ''}API docs at {where}/docs)"
    logging_setup.announce(banner)
    # issue 11, limits on input: WebSocket frames capped like request bodies (the /ws bound is
    # tighter, in the app); X-Forwarded-For is believed only from COTRAIN_TRUSTED_PROXIES
    from cotrain.server.settings import limits_from_env

    limits = limits_from_env()
    trusted = limits["trusted_proxies"]
    uvicorn.run(factory, factory=True, host=host, port=port, log_level=log_level,
                ws_max_size=max(limits["max_body_bytes"], limits["ws_max_message_bytes"]),
                proxy_headers=bool(trusted), forwarded_allow_ips=trusted or None, log_config=None,
                ssl_certfile=tls.certfile if tls else None, ssl_keyfile=tls.keyfile if tls else None)


def worker(
    executor: str = typer.Option(
        None, "--executor", help="local: runs are child processes of this worker; slurm: Slurm jobs "
        "(COTRAIN_SLURM_*). Default: COTRAIN_EXECUTOR, else local.",
    ),
) -> None:
    """Run an executor only: claim queued sessions from the shared database (set DATABASE_URL to
    the server's PostgreSQL, and REDIS_URL so its progress reaches the server's WebSocket clients)."""
    import asyncio
    import os

    from cotrain.server.worker import run_worker

    if executor is not None:
        if executor not in ("local", "slurm"):
            typer.echo(f"error: --executor {executor!r} is not an executor; use local or slurm.", err=True)
            raise typer.Exit(2)
        os.environ["COTRAIN_EXECUTOR"] = executor  # read by the worker's settings

    asyncio.run(run_worker())


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app`."""
    app.command("up")(up)
    app.command("worker")(worker)
