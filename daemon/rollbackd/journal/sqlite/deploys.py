"""The SQL of the deploy store: deploy events as received."""

from __future__ import annotations

import json
from datetime import datetime

from rollbackd.core.deploys import Deploy, MigrationFact
from rollbackd.journal.codec import decode_time, encode_json, encode_optional_time
from rollbackd.journal.sqlite.database import SqliteStore


class SqliteDeploys(SqliteStore):
    """:class:`~rollbackd.journal.stores.DeployStore` in SQLite."""

    def record_deploy(self, deploy: Deploy, received_at: datetime) -> None:
        with self._database.transaction() as db:
            db.execute(
                "INSERT INTO deploys (service, version, ref, time, migrations, received_at)"
                " VALUES (?,?,?,?,?,?)",
                (
                    deploy.service,
                    deploy.version,
                    deploy.ref,
                    encode_optional_time(deploy.time),
                    encode_json([m.__dict__ for m in deploy.migrations]),
                    encode_optional_time(received_at),
                ),
            )

    def deploys(self, skip: int = 0) -> list[Deploy]:
        """Every deploy event received, oldest first, less the first ``skip``."""
        with self._database.read() as db:
            rows = db.execute(
                "SELECT service, version, ref, time, migrations FROM deploys ORDER BY id"
                " LIMIT -1 OFFSET ?",
                (max(skip, 0),),
            ).fetchall()
        return [
            Deploy(
                service=r[0],
                version=r[1],
                time=decode_time(r[3]),
                source="event",
                ref=r[2],
                migrations=tuple(MigrationFact(**m) for m in json.loads(r[4])),
            )
            for r in rows
        ]
