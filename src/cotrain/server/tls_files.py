"""`cotrain up --ssl-certfile F --ssl-keyfile F`: the pair is checked before the server starts, so a
missing, unreadable or mismatched file is one sentence instead of uvicorn's traceback mid-start."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsFileError(ValueError):
    """The certificate or key cannot serve HTTPS; the message says which and what to do."""


@dataclass(frozen=True)
class TlsFiles:
    certfile: str
    keyfile: str


def _readable(option: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise TlsFileError(f"{option} {value}: there is no such file; give the path of a PEM file.")
    try:
        path.read_bytes()
    except OSError as exc:
        raise TlsFileError(f"{option} {value}: the file cannot be read ({exc.strerror}); "
                           "fix its permissions.") from None
    return str(path.resolve())


def check_tls_files(certfile: str | None, keyfile: str | None) -> TlsFiles | None:
    """The pair to serve HTTPS with, or None for plain HTTP (neither given)."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise TlsFileError("--ssl-certfile and --ssl-keyfile go together; give both (or neither for plain HTTP).")
    files = TlsFiles(_readable("--ssl-certfile", certfile), _readable("--ssl-keyfile", keyfile))
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(files.certfile, files.keyfile, password=lambda: b"")  # an encrypted key: no prompt
    except ssl.SSLError as exc:
        raise TlsFileError(f"--ssl-certfile/--ssl-keyfile cannot be used ({exc.reason or exc}); give a PEM "
                           "certificate and the private key that belongs to it (not encrypted).") from None
    return files
