"""The DB-backed NonceStore: nonces survive restarts and are shared by server replicas."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, update
from sqlalchemy.orm import Session, sessionmaker

from cotrain.chain.orm import ChainNonce
from cotrain.chain.signin import Challenge


class SqlNonceStore:
    def __init__(self, factory: sessionmaker[Session]):
        self._factory = factory

    def save(self, challenge: Challenge) -> None:
        with self._factory.begin() as db:
            # Expired nonces are of no further use; drop them as new ones are issued.
            db.execute(delete(ChainNonce).where(ChainNonce.expires_at < challenge.expires_at.timestamp() - 3600))
            db.add(ChainNonce(
                nonce=challenge.nonce,
                address=challenge.address,
                application=challenge.application,
                chain_id=challenge.chain_id,
                message=challenge.message,
                expires_at=challenge.expires_at.timestamp(),
            ))

    def get(self, nonce: str) -> Challenge | None:
        with self._factory() as db:
            row = db.get(ChainNonce, nonce)
            if row is None:
                return None
            return Challenge(row.nonce, row.address, row.application, row.chain_id, row.message,
                             datetime.fromtimestamp(row.expires_at, UTC))

    def consume(self, nonce: str, now: datetime) -> str:
        with self._factory.begin() as db:
            # One conditional UPDATE: of two concurrent uses, only one changes the row.
            use = (update(ChainNonce)
                   .where(ChainNonce.nonce == nonce, ChainNonce.used_at.is_(None),
                          ChainNonce.expires_at > now.timestamp())
                   .values(used_at=now.timestamp()))
            if cast(CursorResult[Any], db.execute(use)).rowcount == 1:
                return "ok"
            row = db.get(ChainNonce, nonce)
            if row is None:
                return "unknown"
            return "used" if row.used_at is not None else "expired"
