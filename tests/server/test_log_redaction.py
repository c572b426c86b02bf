"""Tokens in WebSocket URLs never reach the logs."""

from __future__ import annotations

import logging

from cotrain.server import log_redaction


def test_uvicorn_log_lines_hide_tokens(caplog):
    log_redaction.install()
    with caplog.at_level(logging.INFO, logger="uvicorn.error"):
        logging.getLogger("uvicorn.error").info('%s - "WebSocket %s" [accepted]', "127.0.0.1:5",
                                                "/ws?token=ct_secret&x=1")
    assert "ct_secret" not in caplog.text and "token=***&x=1" in caplog.text
