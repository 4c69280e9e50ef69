"""Alembic environment: voxgate always hands it an open connection (see ``storage/db.py``)."""

from alembic import context

from voxgate.storage.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
