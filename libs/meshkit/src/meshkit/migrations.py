"""Alembic helpers: an async `env.py` in three lines, `python -m <service>.migrate`, and the
schema steps every publishing service's history shares."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command, context, op
from alembic.config import Config
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from meshkit.settings import ServiceSettings


def alembic_config(script_location: Path, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    # Date-stamped revision files sort in the order they were written.
    config.set_main_option(
        "file_template",
        "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d-%%(rev)s_%%(slug)s",
    )
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_to_head(script_location: Path, database_url: str) -> None:
    """What Kubernetes' migration Job and `make run` execute."""
    command.upgrade(alembic_config(script_location, database_url), "head")


def migrate_from_environment(settings: ServiceSettings, script_location: Path) -> None:
    """The body of every `python -m <service>.migrate`: the database named by the service's
    settings (DATABASE_URL) brought to the latest revision."""
    if settings.database_url is None:
        raise SystemExit("DATABASE_URL is not set")
    upgrade_to_head(script_location, settings.database_url)


def run_env(target_metadata: MetaData) -> None:
    """The whole body of a service's `migrations/env.py`."""
    url = context.config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("sqlalchemy.url is not set")

    def migrate(connection: Connection) -> None:
        context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()

    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return

    async def run() -> None:
        engine = create_async_engine(url, poolclass=pool.NullPool)
        async with engine.connect() as connection:
            await connection.run_sync(migrate)
        await engine.dispose()

    asyncio.run(run())


def create_outbox_notify_trigger() -> None:
    """The trigger the services' first migrations created: every statement that inserted outbox
    rows ran `pg_notify('outbox_inserted')`, which woke the relays' `LISTEN` connections at
    commit. Their `outbox_without_notify` migrations drop it (docs/events.md)."""
    op.execute(
        """
        CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_inserted', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox "
        "FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()"
    )


def drop_outbox_notify_trigger() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_notify ON outbox")
    op.execute("DROP FUNCTION IF EXISTS outbox_notify()")
