"""A full disk under the server (issue 18): 507 Insufficient Storage with one sentence saying which disk,
instead of a 500 and a traceback. Nothing is kept broken: the next request after space returns works.

Two ways it shows: a plain OSError(ENOSPC) from a file the server writes (generated configs, run logs,
uploads), and the database refusing a write (SQLite "database or disk is full", PostgreSQL 53100).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi.responses import JSONResponse
from sqlalchemy.engine import make_url

from cotrain.disk_space import free_bytes, says_disk_full, size_text

log = logging.getLogger(__name__)

INSUFFICIENT_STORAGE = 507


def disk_full_sentence(exc: BaseException, home: Path) -> str | None:
    """What a write that ran out of space says to the user (the file when the error names it, else
    COTRAIN_HOME, where the server writes its files); None when `exc` is not a full disk."""
    if not says_disk_full(exc):
        return None
    filename = getattr(exc, "filename", None)
    path = Path(str(filename)) if filename else home
    what = str(path) if filename else f"a file under {path}"
    return (f"The disk is full: {what} could not be written ({size_text(free_bytes(path))} free there); "
            "free space on that disk and try again")


def file_disk_full(exc: OSError, home: Path) -> JSONResponse | None:
    """The 507 for a file the server could not write for lack of space; None for any other OSError."""
    sentence = disk_full_sentence(exc, home)
    return None if sentence is None else _refused(sentence)


def database_disk_full(exc: Exception, database_url: str) -> JSONResponse | None:
    """The 507 for a write the database refused for lack of space; None for any other database error."""
    if not says_disk_full(exc):
        return None
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database:
        path = Path(url.database)
        return _refused(f"The disk is full: the database {path} cannot grow ({size_text(free_bytes(path))} free "
                        "there); free space on that disk and try again")
    return _refused("The disk of the database server is full; free space there and try again")


def _refused(sentence: str) -> JSONResponse:
    log.error("%s", sentence)
    return JSONResponse({"detail": sentence}, status_code=INSUFFICIENT_STORAGE)
