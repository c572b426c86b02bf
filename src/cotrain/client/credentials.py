"""Where `cotrain login` keeps the server and token: `$XDG_CONFIG_HOME/cotrain/login.json` (default
`~/.config/cotrain/`), readable by its owner only (mode 600, folder 700).

Which server and token a command uses: `--server` / `--token`, else COTRAIN_SERVER / COTRAIN_TOKEN,
else the stored login. A stored token is only sent to the server it was issued by: another server
named by --server or COTRAIN_SERVER gets no token unless one is given for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotrain.client.errors import CotrainError


@dataclass(frozen=True)
class Login:
    server: str
    token: str | None
    source: str  # where the server came from: "option", "COTRAIN_SERVER" or the login file


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"  # relative: ignored (XDG spec)
    return base / "cotrain"


def login_path(environ: Mapping[str, str] | None = None) -> Path:
    return config_dir(environ) / "login.json"


def save_login(server: str, token: str | None, environ: Mapping[str, str] | None = None, **extra: Any) -> Path:
    """Store the login, replacing the previous one; the file is created with mode 600 (never wider,
    not even for a moment)."""
    path = login_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    partial = path.with_name(path.name + ".part")
    partial.unlink(missing_ok=True)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"server": server.rstrip("/"), "token": token, **extra}, fh, indent=2)
    os.replace(partial, path)
    return path


def load_login(environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    path = login_path(environ)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CotrainError(None, f"{path} cannot be read ({exc}); run `cotrain login` again.") from None
    return data if isinstance(data, dict) else None


def forget_login(environ: Mapping[str, str] | None = None) -> bool:
    path = login_path(environ)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def resolve(server: str | None = None, token: str | None = None,
            environ: Mapping[str, str] | None = None) -> Login:
    """The server and token to use (see the module's docstring)."""
    environ = os.environ if environ is None else environ
    stored = load_login(environ) or {}
    stored_server = str(stored.get("server") or "").rstrip("/")
    if server:
        source = "option"
    elif environ.get("COTRAIN_SERVER"):
        server, source = environ["COTRAIN_SERVER"], "COTRAIN_SERVER"
    elif stored_server:
        server, source = stored_server, str(login_path(environ))
    else:
        raise CotrainError(None, "No server to talk to: run `cotrain login --server URL`, or pass --server URL "
                                 "(or set COTRAIN_SERVER).")
    server = server.rstrip("/")
    if not token:
        token = environ.get("COTRAIN_TOKEN") or (stored.get("token") if server == stored_server else None)
    return Login(server, token or None, source)
