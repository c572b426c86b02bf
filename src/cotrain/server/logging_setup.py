"""The one place `cotrain up` and `cotrain worker` configure logging (COTRAIN_LOG_FORMAT): every record,
uvicorn's access and error lines included, goes to stdout and to a rotating file under
`COTRAIN_HOME/logs/system/` (server.log, worker.log), as one readable line or as one JSON object, and
with tokens in URLs redacted (server/log_redaction.py) whichever logger made it.

JSON lines carry the original design's fields (timestamp, level, message, module, function, line),
the logger's name, and the request id, session id and actor of the request being served when there
is one (server/request_context.py); an exception adds its traceback as `exc_info`.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cotrain.server.log_redaction import TOKEN_IN_QUERY, RedactTokens
from cotrain.server.request_context import current

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_BYTES = 10 * 1024 * 1024  # per file; with BACKUPS, at most 60 MiB of logs per process kind
BACKUPS = 5
ACCESS_LOGGER = "uvicorn.access"
_INSTALLED = "_cotrain_handler"  # marks our handlers, so a second call replaces them instead of doubling lines
ANNOUNCE_LOGGER = "cotrain.announce"
_format: LogFormat = "text"  # what `configure` last set up; `announce` follows it


def redact(text: str) -> str:
    return TOKEN_IN_QUERY.sub(r"\1***", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "message": redact(record.getMessage()),
            "logger": record.name,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "service": self.service,
        }
        context = current()
        if context is not None:
            entry["request_id"] = context.request_id
            if context.session_id:
                entry["session_id"] = context.session_id
            if context.actor:
                entry["actor"] = context.actor
        if record.name == ACCESS_LOGGER and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args  # uvicorn's access line, as fields
            entry.update(client=str(client), method=str(method), path=redact(str(path)), status=status)
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The readable line, with the request id appended when there is one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = redact(super().format(record))
        context = current()
        return f"{line} [request {context.request_id}]" if context is not None else line


def formatter_for(log_format: LogFormat, service: str) -> logging.Formatter:
    return JsonFormatter(service) if log_format == "json" else TextFormatter()


def configure(log_format: LogFormat, logs_dir: Path, service: str, level: int | str = logging.INFO) -> Path:
    """Send every record to stdout and to `logs_dir/<service>.log` (rotating) in `log_format`; returns
    the file's path. Loggers of their own (uvicorn's) are made to pass their records on to these handlers."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{service}.log"
    formatter = formatter_for(log_format, service)
    stream = logging.StreamHandler(sys.stdout)
    rotating = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _INSTALLED, False)]:
        root.removeHandler(handler)
        handler.close()
    for handler in (stream, rotating):
        handler.setFormatter(formatter)
        handler.addFilter(RedactTokens())  # records of every logger, not only the ones log_redaction.install knows
        setattr(handler, _INSTALLED, True)
        root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", ACCESS_LOGGER):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger(ANNOUNCE_LOGGER).setLevel(logging.INFO)  # shown whatever --log-level says, as prints were
    logging.captureWarnings(True)
    global _format
    _format = log_format
    return path


def announce(text: str, secret: bool = False) -> None:
    """A start-up line for the person at the terminal ("server on ...", "waiting for sessions"): printed
    in text mode, a log record in json mode (so stdout stays one JSON object a line). A `secret` line (the
    first admin token) never becomes a log record, which would keep it in the log file: in json mode it
    goes to stderr."""
    if secret:
        print(text, file=sys.stderr if _format == "json" else sys.stdout, flush=True)
    elif _format == "json":
        logging.getLogger(ANNOUNCE_LOGGER).info(text)
    else:
        print(text, flush=True)
