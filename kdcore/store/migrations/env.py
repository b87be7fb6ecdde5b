"""Alembic environment: migrations run on a connection the Store hands over, never from a URL of their own."""
from alembic import context

from kdcore.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
