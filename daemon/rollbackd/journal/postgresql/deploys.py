"""The SQL of the deploy store in PostgreSQL: deploy events as received."""

from __future__ import annotations

from datetime import datetime

from rollbackd.core.deploys import Deploy, MigrationFact
from rollbackd.journal.codec import kept_time
from rollbackd.journal.postgresql.database import json_text
from rollbackd.journal.postgresql.incidents import PostgresStore, _utc


class PostgresDeploys(PostgresStore):
    """:class:`~rollbackd.journal.stores.DeployStore` in PostgreSQL."""

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None:
        migrations = json_text([m.__dict__ for m in deploy.migrations])
        with self._database.transaction() as db:
            db.execute(
                "INSERT INTO deploys (service, version, ref, time, migrations, received_at)"
                " VALUES (%s,%s,%s,%s,%s::json,%s)",
                (
                    deploy.service,
                    deploy.version,
                    deploy.ref,
                    kept_time(deploy.time),
                    migrations,
                    kept_time(received_at),
                ),
            )

    def deploys(self, skip: int = 0) -> list[Deploy]:
        """Every deploy event received, oldest first, less the first ``skip``."""
        with self._database.read() as db:
            rows = db.execute(
                "SELECT service, version, ref, time, migrations FROM deploys ORDER BY id OFFSET %s",
                (max(skip, 0),),
            ).fetchall()
        return [
            Deploy(
                service=r[0],
                version=r[1],
                time=_utc(r[3]),
                source="event",
                ref=r[2],
                migrations=tuple(MigrationFact(**m) for m in r[4]),
            )
            for r in rows
        ]
