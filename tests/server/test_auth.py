"""Token authentication against a real SQLite database, including a plugged-in resolver (how
the chain's wallet tokens become owners of sessions)."""

from __future__ import annotations

from cotrain.db import make_db_factory, make_engine, run_migrations
from cotrain.server import auth


def test_api_tokens_and_resolved_principals(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    run_migrations(engine)
    factory = make_db_factory(engine)
    with factory.begin() as db:
        row, token = auth.create_token(db, "alice")
        assert token not in row.token_hash and row.token_hash == auth.hash_token(token)

    def wallet(token: str) -> auth.ResolvedToken | None:
        if not token.startswith("w."):
            return None
        return auth.ResolvedToken(f"wallet:{token.removeprefix('w.')}", issued_at=1.0, token_id=token)

    auth.register_token_resolver(wallet)
    try:
        with factory.begin() as db:
            alice = auth.authenticate(db, token)
            first = auth.authenticate(db, "w.0xabc")
            again = auth.authenticate(db, "w.0xabc")
            other = auth.authenticate(db, "w.0xdef")
            assert auth.authenticate(db, "nonsense") is None
            # the stored principal hash is not a usable bearer token
            assert auth.authenticate(db, auth.principal_hash("wallet:0xabc")) is None
        assert alice is not None and alice.name == "alice"
        assert first is not None and first == again and first.name == "wallet:0xabc" and not first.is_admin
        assert other is not None and other.token_id != first.token_id
    finally:
        auth._resolvers.remove(wallet)
