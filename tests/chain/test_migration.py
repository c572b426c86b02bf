"""The chain's Alembic revision creates exactly the tables of chain/models.py, after the server's."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData

from cotrain.chain.orm import CHAIN_TABLES
from cotrain.db import make_engine, run_migrations


def test_migration_matches_models(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    run_migrations(engine)
    wanted = MetaData()
    for table in CHAIN_TABLES:
        table.to_metadata(wanted)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), wanted)
    # Only differences on chain tables count (the server's tables are not in `wanted`, so they show as removals).
    ours = [d for d in diff if "chain_" in repr(d)
            and not (isinstance(d, tuple) and d[0] in ("remove_table", "remove_index"))]
    assert ours == []
    engine.dispose()
