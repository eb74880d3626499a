"""The catalog version: bumped by every commit that changes what the pages show.

Listeners on every ``Session`` note when a flush or a bulk statement touches a catalog table,
and just before such a transaction commits they add one to ``catalog_version.value`` in that
same transaction: the bump and the data become visible together, so a reader that sees the
new version also sees the new rows (the row lock is held only for the commit itself). Jobs
are not catalog tables: progress updates leave cached pages alone.
"""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

from backend.db.models import CatalogVersion

CATALOG_TABLES = frozenset(
    {"models", "layers", "units", "artifacts", "datasets", "families", "family_members"}
)
_FLAG = "catalog_changed"
# Commits in this process that bumped the version: lets this process's cache see its own
# writes at once, without asking the database.
_local = itertools.count(1)
local_generation = 0


def _touches_catalog(objs: Any) -> bool:
    return any(getattr(o, "__tablename__", None) in CATALOG_TABLES for o in objs)


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, _flush: UOWTransaction) -> None:
    # In after_flush, new/dirty/deleted still hold what this flush wrote.
    if _touches_catalog(session.new) or _touches_catalog(session.deleted):
        session.info[_FLAG] = True
    elif any(session.is_modified(o) for o in session.dirty if _touches_catalog((o,))):
        session.info[_FLAG] = True


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        table = getattr(state.statement, "table", None)
        if getattr(table, "name", None) in CATALOG_TABLES:
            state.session.info[_FLAG] = True


@event.listens_for(Session, "before_commit")
def _bump(session: Session) -> None:
    session.flush()  # what is still pending may touch the catalog too
    if not session.info.pop(_FLAG, False):
        return
    bumped = session.execute(
        update(CatalogVersion).where(CatalogVersion.id == 1).values(value=CatalogVersion.value + 1)
    )
    # No row (a schema built without migrations): read_version gives None, nothing is cached.
    if bumped.rowcount:  # type: ignore[attr-defined]
        session.info["catalog_bumped"] = True


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    global local_generation
    if session.info.pop("catalog_bumped", False):
        local_generation = next(_local)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_FLAG, None)
    session.info.pop("catalog_bumped", None)


def read_version(conn: Connection) -> int | None:
    """The stored version, or None where the table is missing (an unmigrated database)."""
    try:
        return conn.execute(select(CatalogVersion.value).where(CatalogVersion.id == 1)).scalar()
    except Exception:  # noqa: BLE001 - any failure means "cannot validate": do not cache
        conn.rollback()
        return None
