"""The server's own engine peer validates every rewarded DiLoCo session (issue 12, "The validator").

A session with a reward pool pays by verified rounds only, so its rounds must be judged by a peer the
server trusts: the engine the executor launches for it. Before launch the executor makes that engine's
peer identity (where the engine itself will look for it: `cotrain.p2p.identity.identity_path` of the
checkpoint root the engine computes) and records its peer id on the session row, since a remote
`cotrain worker` may keep another COTRAIN_HOME than the server. `GET /sessions/{id}/join` hands that
peer id to volunteers as `validators`: only peers trusting a validator follow its exclusions.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.orm import Session

from cotrain.paths import Layout
from cotrain.server.orm import TrainingSession

VALIDATE_ENV = "COTRAIN_DISTRIBUTED_DILOCO_VALIDATE"  # the engine's config override of distributed.diloco.validate


def is_rewarded_diloco(db: Session, row: TrainingSession) -> bool:
    """A DiLoCo session with a reward pool: its rounds are judged by the server's own peer."""
    from cotrain.chain.orm import RewardPoolRow

    return row.strategy == "diloco" and db.get(RewardPoolRow, row.id) is not None


def engine_identity_path(config_path: Path, env: Mapping[str, str]) -> Path:
    """The identity file of the engine launched with `config_path` and `env` (COTRAIN_HOME its home and
    working directory): the checkpoint root it computes (a relative `checkpoint.output_path` is relative to
    that directory), then `identity_path` of its session id, as DilocoStrategy._identity_path does."""
    from cotrain.config import load_config
    from cotrain.p2p.identity import identity_path

    home = Path(env["COTRAIN_HOME"])
    config = load_config(config_path, environ=env)
    root = home / config.checkpoint.output_path if config.checkpoint.output_path else Layout(home).checkpoints
    return identity_path(root, config.session.id or "session")


def prepare_validator(config_path: Path, env: Mapping[str, str]) -> str:
    """Make (or keep: a retried run stays the same peer) the engine's identity file; its peer id."""
    from cotrain.p2p.identity import load_or_create_identity
    from cotrain.p2p.peer_keys import peer_id_of

    key = load_or_create_identity(engine_identity_path(config_path, env))
    return peer_id_of(key.get_public_key())


def validators_of(row: TrainingSession) -> list[str]:
    """The peers a volunteer of this session trusts for exclusions: the server's own peer, once launched."""
    return [row.validator_peer_id] if row.validator_peer_id else []
