"""What a volunteer peer needs from a CoTrain server to join a session: the session's config
(the same model and data as every other peer) and the server's DHT addresses to bootstrap from.

Both come from one request, `GET {server}/api/v1/sessions/{id}/join`. Every way it can go wrong
becomes a `JoinError` whose message says what to do; no HTTP error reaches the user raw.

A volunteer trusts the server with what to train, never with where on the volunteer's machine to
read or write: `volunteer_config` keeps only the keys of `VOLUNTEER_KEYS` (an allow-list: the
model, the training settings, the data by name, the DiLoCo settings) and drops everything else,
paths first (`model.path`, `data.data_path`, a `data.dataset = "hf:/path"` folder, a tokenizer
path, `checkpoint.output_path`, `checkpoint.resume`), but also the server's wallet and listen addresses, and
any key this version does not know; `cotrain join` names what it dropped in a warning line.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from cotrain.config.hf_spec import hf_path


class JoinError(Exception):
    """The server cannot give what joining needs; the message says what to do."""


@dataclass
class JoinInfo:
    session_id: str
    strategy: str
    config: dict[str, Any]  # the session's parsed TOML config
    initial_peers: list[str]  # the server's DHT addresses (empty while its DHT is not running)
    status: str | None = None  # the session's status on the server (older servers do not say)
    validators: list[str] = field(default_factory=list)  # peers whose exclusions to follow (issue 12)


def fetch_join_info(server: str, session_id: str, token: str | None = None, timeout: float = 30.0) -> JoinInfo:
    """The session's config and bootstrap peers from the server at `server` (http[s]://host[:port]);
    `token` (an API token) lets a private session's owner or an admin read it."""
    base = server.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise JoinError(f"--server {server!r} is not a URL: give the server's address with http:// or https://, "
                        "e.g. --server http://127.0.0.1:8000")
    url = f"{base}/api/v1/sessions/{quote(session_id, safe='')}/join"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise JoinError(f"Could not reach the CoTrain server at {base} ({type(exc).__name__}: {exc or 'no answer'}). "
                        "Check --server and that the server is running and reachable from this machine.") from None
    if answer.status_code != 200:
        raise JoinError(_refusal(answer, base, session_id, token))
    return _parse(answer, base, session_id)


def _refusal(answer: httpx.Response, base: str, session_id: str, token: str | None) -> str:
    """The sentence for a non-200 answer."""
    detail = _detail(answer)
    if answer.status_code == 404:
        return (f"The server at {base} has no session {session_id!r} that {'this token' if token else 'a visitor'} "
                f"can see. Check the session id (its page on the server shows it); if the session is private, "
                f"pass --token with an API token of its owner or an admin.")
    if answer.status_code in (401, 403):
        what = "refused this token" if token else "needs a token for this session"
        return (f"The server at {base} {what} ({detail}). Pass --token with a valid API token (or set COTRAIN_TOKEN); "
                "sign in on the server's web page to get one.")
    if answer.status_code == 422:
        return f"{session_id!r} is not a valid session id ({detail}); copy the id from the session's page."
    return (f"The server at {base} answered {answer.status_code} to GET {answer.request.url.path} ({detail}). "
            "Try again in a moment; if it persists, check --server and the server's log.")


def _detail(answer: httpx.Response) -> str:
    try:
        detail = answer.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (answer.text.strip()[:200] or answer.reason_phrase)


def _parse(answer: httpx.Response, base: str, session_id: str) -> JoinInfo:
    """The answer's fields, checked: a proxy's error page or another service must not start a peer."""
    not_cotrain = (f"The server at {base} did not answer like a CoTrain server (GET {answer.request.url.path}); "
                   "check --server (the address of `cotrain up`, without /api/v1).")
    try:
        body = answer.json()
        config = tomllib.loads(body["config"])
        peers = [str(address) for address in body.get("initialPeers") or []]
        strategy = str(body["strategy"])
        validators = [str(peer) for peer in body.get("validators") or []]
    except (ValueError, KeyError, TypeError, AttributeError, tomllib.TOMLDecodeError):
        raise JoinError(not_cotrain) from None
    return JoinInfo(session_id=str(body.get("sessionId") or session_id), strategy=strategy, config=config,
                    initial_peers=peers, status=body.get("status"), validators=validators)


# What a volunteer's run takes from the server's config. A key maps to True (kept), to a section of
# its own (a dict), or to a test of its value (kept when the value passes). Anything else is dropped.
_TRAIN_KEYS = (
    "batch_size", "micro_batch_size", "learning_rate", "min_lr_ratio", "epochs", "max_steps", "optimizer", "schedule",
    "warmup_steps", "weight_decay", "betas", "momentum", "grad_clip", "seed", "deterministic", "device", "compile",
    "activation_checkpointing", "log_interval", "eval_interval", "eval_batches",
)
_DILOCO_KEYS = (
    "inner_steps", "outer_lr", "outer_momentum", "nesterov", "compression", "initial_peers", "min_peers",
    "matchmaking_time", "averaging_timeout", "progress_interval",
    # the round shards and their checks are the session's, so every peer and validator agrees on them
    "shard_samples", "commit_every", "receipt_quorum", "own_data_margin",
    # never `validate` (judging rounds is a volunteer's own choice: `cotrain join --validate`) nor `validators`
    # (whom to trust comes from the join info's `validators`, the server's own peer)
)
VOLUNTEER_KEYS: dict[str, Any] = {
    "session": dict.fromkeys(("id", "name", "description"), True),
    "model": dict.fromkeys(("type", "size", "precision", "dropout"), True),
    "train": dict.fromkeys(_TRAIN_KEYS, True),
    "distributed": {
        **dict.fromkeys(("nodes", "gpus_per_node", "strategy", "backend"), True),
        "diloco": dict.fromkeys(_DILOCO_KEYS, True),
    },
    "data": {
        **dict.fromkeys(("seq_length", "max_bytes", "vocab_size", "val_fraction", "mlm_probability", "split",
                         "text_column"), True),
        "dataset": lambda value: hf_path(value) is None,  # "stdlib", "hf:NAME": names; "hf:/path" is a path
        "tokenizer": lambda value: value == "train",  # a BPE trained on the corpus, not a path
    },
    "checkpoint": dict.fromkeys(("interval", "keep"), True),
}


def volunteer_config(config: dict[str, Any], allowed: dict[str, Any] = VOLUNTEER_KEYS,
                     prefix: str = "") -> tuple[dict[str, Any], list[str]]:
    """(the keys of the server's `config` a volunteer's run takes, the dotted names of those dropped)."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        rule = allowed.get(key)
        if isinstance(rule, dict) and isinstance(value, dict):
            inner, inner_dropped = volunteer_config(value, rule, name + ".")
            if inner:
                kept[key] = inner
            dropped.extend(inner_dropped)
        elif rule is True or (callable(rule) and rule(value)):
            kept[key] = value
        else:
            dropped.append(name)
    return kept, dropped
