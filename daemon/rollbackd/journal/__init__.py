"""The incident journal: everything that happens, written before it is acted on.

Every checklist step is written *before* it runs and its outcome after, which
is how a restart finds a step that was interrupted. Webhook deliveries and
deploy events are journaled as received.

- what is kept (incidents, steps, decisions, evidence, alerts) is the incident model,
  :mod:`rollbackd.core.incident`, re-exported here;
- :mod:`.stores`: the interfaces, one protocol per concern, and :class:`Journal`;
- :mod:`.sqlite`: :class:`SqliteJournal`, the journal in one SQLite file (production, the
  default: in the state directory);
- :mod:`.postgresql`: ``PostgresJournal``, the journal in PostgreSQL (``[journal] url``),
  imported from there: psycopg loads only for a journal in PostgreSQL;
- :mod:`.memory`: :class:`MemoryJournal`, the same in Python structures (tests, fakes);
- :mod:`.sole`: the leadership of a journal one process owns (memory, SQLite): it leads.

Callers type against :class:`Journal` (or the one store they use) and import
from here.
"""

from __future__ import annotations

from rollbackd.core.incident import (
    AlertRecord,
    DecisionRecord,
    Delivery,
    EvidenceKind,
    EvidenceRecord,
    IncidentRecord,
    IncidentState,
    NewIncident,
    Outcome,
    RollbackFacts,
    StepRecord,
)
from rollbackd.errors import JournalError, JournalUnavailable
from rollbackd.journal.memory import MemoryJournal
from rollbackd.journal.sqlite import SqliteJournal, journal_path
from rollbackd.journal.sqlite.schema import SCHEMA_VERSION
from rollbackd.journal.sqlite.writer import BATCH_ALERTS, BATCH_DELIVERIES
from rollbackd.journal.stores import (
    AlertStore,
    DeployStore,
    IncidentStore,
    Journal,
    Leadership,
    Lease,
)

__all__ = [
    "BATCH_ALERTS",
    "BATCH_DELIVERIES",
    "SCHEMA_VERSION",
    "AlertRecord",
    "AlertStore",
    "DecisionRecord",
    "Delivery",
    "DeployStore",
    "EvidenceKind",
    "EvidenceRecord",
    "IncidentRecord",
    "IncidentState",
    "IncidentStore",
    "Journal",
    "JournalError",
    "JournalUnavailable",
    "Leadership",
    "Lease",
    "MemoryJournal",
    "NewIncident",
    "Outcome",
    "RollbackFacts",
    "SqliteJournal",
    "StepRecord",
    "journal_path",
]
