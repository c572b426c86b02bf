"""`cotrain login`, `cotrain sessions ...` and `cotrain models list|compare|download`: a CoTrain
server from the terminal, through `cotrain.client` (imported when a command runs).

Which server and token: `--server` / `--token`, else COTRAIN_SERVER / COTRAIN_TOKEN, else what
`cotrain login` stored (client/credentials.py). `--json` prints machine-readable output. Errors are
one line on stderr and exit 2; `sessions watch` exits 0 when the session completes, 1 when it
fails, 3 when it is cancelled.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from cotrain.cli.core_cmd import models_app

if TYPE_CHECKING:
    from cotrain.client import Client

F = TypeVar("F", bound=Callable[..., Any])

sessions_app = typer.Typer(help="Training sessions on a CoTrain server (see `cotrain login`).", no_args_is_help=True)

Server = Annotated[str | None, typer.Option("--server", envvar="COTRAIN_SERVER", show_envvar=True,
                                            help="The server, e.g. http://127.0.0.1:8000 (default: the stored login).")]
Token = Annotated[str | None, typer.Option("--token", envvar="COTRAIN_TOKEN", show_envvar=True,
                                           help="An API or wallet token (default: the stored login's).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SessionId = Annotated[str, typer.Argument(help="The session's id (`cotrain sessions list`).")]

EXIT_ERROR, EXIT_FAILED, EXIT_CANCELLED = 2, 1, 3
WATCH_EXIT = {"completed": 0, "failed": EXIT_FAILED, "cancelled": EXIT_CANCELLED}


def client_errors(func: F) -> F:
    """A CotrainError (or a bad file, or Ctrl-C) is one line on stderr and a non-zero exit, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from cotrain.client import CotrainError

        try:
            return func(*args, **kwargs)
        except CotrainError as exc:
            where = f" ({exc.status})" if exc.status else ""
            print(f"error{where}: {exc.message}", file=sys.stderr)
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as exc:
            print(f"error: {exc.strerror or exc} ({exc.filename or ''})".replace(" ()", ""), file=sys.stderr)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def connect(server: str | None, token: str | None) -> Iterator[Client]:
    from cotrain.client import Client

    client = Client.from_login(server, token)
    try:
        yield client
    finally:
        client.close()


def emit(value: Any) -> None:
    """One JSON document on stdout (pydantic models by their API field names)."""
    from pydantic import BaseModel

    def plain(v: Any) -> Any:
        if isinstance(v, BaseModel):
            return v.model_dump(mode="json", by_alias=True)
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v

    print(json.dumps(plain(value), indent=2, default=str))


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


def _num(value: Any, fmt: str = ".4g") -> str:
    return "-" if value is None else format(value, fmt)


# ---- login -----------------------------------------------------------------------------------

@client_errors
def login(
    server: Annotated[str, typer.Option("--server", envvar="COTRAIN_SERVER", show_envvar=True,
                                        help="The server, e.g. http://127.0.0.1:8000.")],
    token: Annotated[str | None, typer.Option("--token", help="An API token (an admin creates one).")] = None,
    wallet_key_file: Annotated[Path | None, typer.Option(
        "--wallet-key-file", help="Sign in with an Aptos wallet: a file (mode 600) holding its Ed25519 private key; "
                                  "only a signature leaves this machine.")] = None,
    as_json: AsJson = False,
) -> None:
    """Sign in to a CoTrain server and remember it (and the token) in ~/.config/cotrain/ (mode 600)."""
    from cotrain.client import Client, CotrainError
    from cotrain.client.credentials import save_login

    if token and wallet_key_file:
        raise CotrainError(None, "Give either --token or --wallet-key-file, not both.")
    address = None
    if wallet_key_file is not None:
        from cotrain.client.wallet import sign_in_with_key_file

        token, address = sign_in_with_key_file(server, wallet_key_file)
    elif not token:
        if not sys.stdin.isatty():
            raise CotrainError(None, "Give --token TOKEN or --wallet-key-file FILE (no terminal to ask for a token).")
        token = typer.prompt("API token", hide_input=True)
    with Client(server, token) as client:
        who = client.me()
    path = save_login(server, token, None, **({"address": address} if address else {}))
    if as_json:
        emit({"server": server.rstrip("/"), "name": who["name"], "role": who["role"], "saved": str(path)})
        return
    print(f"logged in to {server.rstrip('/')} as {who['name']} ({who['role']}); saved in {path}")


@client_errors
def logout() -> None:
    """Forget the stored login (a wallet sign-in is also signed out on its server)."""
    from cotrain.client.credentials import forget_login, load_login

    stored = load_login() or {}
    if stored.get("address") and stored.get("token") and stored.get("server"):
        import httpx

        try:  # the token stops working everywhere, not only here
            httpx.post(str(stored["server"]) + "/api/v1/auth/logout",
                       headers={"Authorization": f"Bearer {stored['token']}"}, timeout=10)
        except httpx.HTTPError as exc:
            print(f"warning: {stored['server']} could not be reached to sign the wallet token out ({exc}); "
                  "it stays valid there until it expires", file=sys.stderr)
    print("logged out" if forget_login() else "not logged in")


# ---- sessions --------------------------------------------------------------------------------

@sessions_app.command("list")
@client_errors
def sessions_list(
    server: Server = None, token: Token = None, as_json: AsJson = False,
    status: Annotated[str | None, typer.Option(help="Only this status (queued, running, completed, ...).")] = None,
    search: Annotated[str | None, typer.Option("--search", "-q", help="Part of the name.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
) -> None:
    """Sessions you may read, newest first."""
    with connect(server, token) as client:
        page = client.list_sessions(status=status, q=search, limit=limit)
    if as_json:
        emit(page)
        return
    rows = [[s.id, s.name[:40], s.status, f"{s.progress:.0f}%", f"{s.step}/{s.total_steps or '?'}", _num(s.loss),
             f"{s.model_type} {s.model_size}", s.created_at.strftime("%Y-%m-%d %H:%M") if s.created_at else "-"]
            for s in page.items]
    _table(f"{len(page.items)} of {page.total} sessions", ["id", "name", "status", "progress", "step", "loss",
                                                           "model", "created"], rows)


@sessions_app.command("show")
@client_errors
def sessions_show(session_id: SessionId, server: Server = None, token: Token = None, as_json: AsJson = False) -> None:
    """One session: status, progress, metrics, and why it waits or failed."""
    with connect(server, token) as client:
        session = client.get_session(session_id)
    if as_json:
        emit(session)
        return
    lines = [
        f"{session.id}  {session.name}",
        f"  status     {session.status}" + (f" (attempt {session.attempts})" if session.attempts else ""),
        f"  progress   {session.progress:.1f}%  step {session.step}/{session.total_steps or '?'}"
        f"  loss {_num(session.loss)}",
        f"  model      {session.model_type} {session.model_size}, {session.strategy}",
        f"  public     {'yes' if session.public else 'no'}, priority {session.priority}",
    ]
    if session.waiting_reason:
        lines.append(f"  waiting    {session.waiting_reason}")
    if session.error:
        lines.append(f"  error      {session.error}")
    metrics = {k: v for k, v in session.metrics.items() if isinstance(v, int | float)}
    if metrics:
        lines.append("  metrics    " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(metrics.items())))
    print("\n".join(lines))


@sessions_app.command("create")
@client_errors
def sessions_create(
    file: Annotated[Path, typer.Argument(help="A full engine config (.toml, as `cotrain train` runs it) or the "
                                              "original design's session JSON (.json).")],
    set_: Annotated[list[str], typer.Option("--set", help="Override a key: section.key=value for a .toml "
                                                          "(train.max_steps=40), trainingConfig.maxSteps=40 for a "
                                                          ".json (repeatable).")] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="The session's name (default: the config's [session] name).")] = None,
    priority: Annotated[int | None, typer.Option(help="Queue priority (above 0: maintainers and admins).")] = None,
    private: Annotated[bool, typer.Option("--private", help="Only you and admins see it.")] = False,
    draft: Annotated[bool, typer.Option("--draft", help="Keep it a draft until `cotrain sessions start`.")] = False,
    server: Server = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Create a session from FILE and queue it; prints its id."""
    with connect(server, token) as client:
        session = client.create_session(file, overrides=set_, name=name, priority=priority,
                                        public=False if private else None, auto_start=False if draft else None)
    if as_json:
        emit(session)
        return
    print(f"created session {session.id} ({session.status}): {session.name}")
    if session.waiting_reason:
        print(f"  {session.waiting_reason}")


def _state_command(verb: str, doc: str) -> None:
    @client_errors
    def command(session_id: SessionId, server: Server = None, token: Token = None, as_json: AsJson = False) -> None:
        with connect(server, token) as client:
            session = getattr(client, f"{verb}_session")(session_id)
        if as_json:
            emit(session)
            return
        print(f"session {session.id}: {session.status}")

    command.__doc__ = doc
    command.__name__ = f"sessions_{verb}"
    sessions_app.command(verb)(command)


_state_command("start", "Queue a draft, or run a finished session again (it resumes from its checkpoints).")
_state_command("cancel", "Cancel a session (a running one saves a checkpoint first).")
_state_command("retry", "Queue a failed or cancelled session again.")


@sessions_app.command("delete")
@client_errors
def sessions_delete(session_id: SessionId, server: Server = None, token: Token = None) -> None:
    """Delete a session that is not running."""
    with connect(server, token) as client:
        client.delete_session(session_id)
    print(f"deleted session {session_id}")


@sessions_app.command("config")
@client_errors
def sessions_config(session_id: SessionId, server: Server = None, token: Token = None) -> None:
    """Print the session's engine config (TOML): `cotrain train` runs the same thing."""
    with connect(server, token) as client:
        print(client.session_config(session_id), end="")


@sessions_app.command("logs")
@client_errors
def sessions_logs(
    session_id: SessionId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines until the session ends.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many of the last lines.")] = 200,
    stdout: Annotated[bool, typer.Option("--stdout", help="The run's stdout instead of its stderr.")] = False,
    server: Server = None, token: Token = None,
) -> None:
    """The tail of the run's log (stderr by default; -f follows it)."""
    stream = "stdout" if stdout else "stderr"
    with connect(server, token) as client:
        shown = client.follow_logs(session_id, stream, lines) if follow else client.logs(session_id, lines, stream)
        for line in shown:
            print(line, flush=follow)


@sessions_app.command("watch")
@client_errors
def sessions_watch(
    session_id: SessionId,
    after: Annotated[int, typer.Option(help="Start after this message seq (0: from the beginning).")] = 0,
    server: Server = None, token: Token = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON message per line instead of the progress bar.")
    ] = False,
) -> None:
    """Follow a session live (WebSocket; reconnects and resumes without losing a message). Exits 0 when
    it completes, 1 when it fails, 3 when it is cancelled."""
    with connect(server, token) as client:
        final = _watch_json(client, session_id, after) if as_json else _watch_bar(client, session_id, after)
        if final is None:
            final = client.get_session(session_id).status
    raise typer.Exit(WATCH_EXIT.get(final, EXIT_ERROR))


def _watch_json(client: Client, session_id: str, after: int) -> str | None:
    final = None
    for message in client.watch(session_id, after):
        print(message.model_dump_json(), flush=True)
        if message.event == "training.status":
            final = message.data.get("status")
    return final


def _watch_bar(client: Client, session_id: str, after: int) -> str | None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    session = client.get_session(session_id)
    final = None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(f"{session_id} {session.status}", total=100.0,
                            detail=f"step {session.step}/{session.total_steps or '?'}")
        bar.update(task, completed=session.progress)  # a percentage: add_task takes only whole numbers
        for message in client.watch(session_id, after):
            data = message.data
            if message.event == "training.progress":
                loss = data.get("loss")
                bar.update(task, completed=float(data.get("progress") or 0.0),
                           detail=f"step {data.get('step')}/{data.get('totalSteps') or '?'}"
                                  + (f" loss {loss:.4f}" if isinstance(loss, int | float) else ""))
            elif message.event == "training.status":
                final = data.get("status")
                bar.update(task, description=f"{session_id} {final}")
            elif message.event == "training.eval":
                bar.console.print(f"eval at step {data.get('step')}: val loss {_num(data.get('valLoss'))}, "
                                  f"perplexity {_num(data.get('valPerplexity'))}")
            elif message.event == "training.error" and not data.get("interrupted"):
                bar.console.print(f"[red]error[/red] at step {data.get('step')}: {data.get('error')}")
        if final == "completed":
            bar.update(task, completed=100.0)
    ended = client.get_session(session_id)
    version = next((m for m in reversed(client.list_models(session_id))), None) if final == "completed" else None
    print(f"session {session_id} {ended.status}" + (f": model {version.name} (id {version.id})" if version else "")
          + (f": {ended.error}" if ended.error else ""))
    return final


# ---- models ----------------------------------------------------------------------------------

@client_errors
def models_list(
    session: Annotated[str | None, typer.Option("--session", help="Only this session's versions.")] = None,
    presets: Annotated[bool, typer.Option("--presets", help="The model size presets instead "
                                                            "(`cotrain models presets`).")] = False,
    server: Server = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Trained model versions on the server (v1, v2, ... per session)."""
    if presets:
        from cotrain.cli.core_cmd import list_presets

        list_presets()
        return
    with connect(server, token) as client:
        versions = client.list_models(session)
    if as_json:
        emit(versions)
        return
    rows = [[str(v.id), v.session_id, v.name, _num(v.metrics.get("val_loss")), _num(v.metrics.get("val_perplexity")),
             _num(v.metrics.get("num_parameters"), ",") if v.metrics.get("num_parameters") is not None else "-",
             v.created_at.strftime("%Y-%m-%d %H:%M")] for v in versions]
    _table(f"{len(versions)} model versions", ["id", "session", "version", "val loss", "perplexity", "parameters",
                                               "created"], rows)


@client_errors
def models_compare(
    ids: Annotated[list[int], typer.Argument(help="Two or more model version ids (`cotrain models list`).")],
    server: Server = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Versions side by side: val loss, perplexity, accuracy, parameters, tokens seen; * marks the best."""
    with connect(server, token) as client:
        compared = client.compare_models(ids)
    if as_json:
        emit(compared)
        return
    best = compared.get("best", {})
    keys = ("val_loss", "val_perplexity", "val_accuracy", "num_parameters", "tokens_seen")
    rows = [[str(v["id"]), v["sessionId"], v["version"],
             *(_num(v.get(k)) + ("*" if best.get(k) == v["id"] else "") for k in keys)]
            for v in compared["versions"]]
    _table("model versions compared", ["id", "session", "version", *keys], rows)


@client_errors
def models_download(
    model_id: Annotated[int | None, typer.Argument(help="The model version id (`cotrain models list`).")] = None,
    session: Annotated[
        str | None, typer.Option("--session", help="The latest version of this session instead.")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="The folder the zip lands in.")] = Path("."),
    server: Server = None, token: Token = None, as_json: AsJson = False,
) -> None:
    """Download a model version as a zip into the current folder (or --output)."""
    from cotrain.client import CotrainError

    if (model_id is None) == (session is None):
        raise CotrainError(None, "Give a model version id or --session SESSION_ID (one of the two).")
    with connect(server, token) as client:
        path = client.download_model(model_id, output) if model_id is not None \
            else client.download_session_model(session or "", output)
    if as_json:
        emit({"path": str(path), "bytes": path.stat().st_size})
        return
    print(f"saved {path} ({path.stat().st_size:,} bytes)")


def register(app: typer.Typer) -> None:
    """Add this area's commands to `app` (and list/compare/download to `cotrain models`)."""
    app.command("login")(login)
    app.command("logout")(logout)
    app.add_typer(sessions_app, name="sessions")
    models_app.command("list")(models_list)
    models_app.command("compare")(models_compare)
    models_app.command("download")(models_download)
