"""Alembic environment of the tokenreel catalog.

`storage.catalog.upgrade_to_head` runs it on an open connection (passed in
``config.attributes["connection"]``, inside a locked transaction). From a shell it runs on the URL
in $TOKENREEL_CATALOG_URL or the ``sqlalchemy.url`` option::

    TOKENREEL_CATALOG_URL=sqlite:///tokenreel-data/catalog.sqlite \
        alembic -c storage/migrations/alembic.ini upgrade head
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context

from storage.catalog import metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things in place: let future revisions use batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("TOKENREEL_CATALOG_URL") or context.config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("set TOKENREEL_CATALOG_URL (or sqlalchemy.url) to the catalog URL")
    from storage.catalog import create_engine

    # The catalog's own engine settings (SQLite: WAL, busy timeout, BEGIN IMMEDIATE for writes).
    engine = create_engine(url)
    with engine.connect() as shell_connection:
        _run(shell_connection.execution_options(tokenreel_write=True))
    engine.dispose()
