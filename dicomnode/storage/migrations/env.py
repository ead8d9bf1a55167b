"""Alembic environment: runs on the engine the node passes in (or DICOMNODE_DATABASE_URL)."""
from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from dicomnode.storage.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("connection_engine")
    if engine is None:
        engine = create_engine(os.environ["DICOMNODE_DATABASE_URL"])
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        context.run_migrations()


run_migrations_online()
