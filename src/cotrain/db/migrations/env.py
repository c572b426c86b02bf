"""Alembic environment: runs on the connection `cotrain.db.run_migrations` hands in."""

from alembic import context

import cotrain.chain.orm  # noqa: F401  (register their tables on Base.metadata, for autogenerate)
import cotrain.server.orm  # noqa: F401
from cotrain.db import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cotrain.db.run_migrations(engine)")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
