"""Alembic environment: runs on the connection handed over by ``store.upgrade`` or on the
``sqlalchemy.url`` of the config (``alembic revision --autogenerate`` during development)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from gated.billing_sync.schema import metadata

config = context.config


def _run() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


_run()
