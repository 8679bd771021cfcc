"""Alembic environment: always run with a connection handed in by `property_pipeline.db.engine`."""

from alembic import context

from property_pipeline.db.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `property-pipeline db upgrade`")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
