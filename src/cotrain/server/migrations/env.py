"""Alembic environment: runs on the connection `cotrain.server.db.run_migrations` hands in."""

from alembic import context

import cotrain.server.models  # noqa: F401  (registers the tables on Base.metadata)
from cotrain.server.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cotrain.server.db.run_migrations(engine)")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
