"""Alembic environment: runs on the connection the coordinator hands over (see engine.migrate),
or, for `alembic revision --autogenerate` during development, on MITO_DB_URL (a sync URL)."""

import os

import sqlalchemy as sa
from alembic import context

from mito_lab.server.db.models import Base

config = context.config
connection = config.attributes.get("connection")


def run(conn: sa.Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=Base.metadata,
        render_as_batch=conn.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    run(connection)
else:
    engine = sa.create_engine(os.environ.get("MITO_DB_URL", "sqlite:///mito-dev.db"))
    with engine.connect() as conn:
        run(conn)
        conn.commit()
