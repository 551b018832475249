"""The contract every view follows: own its tables, apply a batch of changes inside a transaction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from projections.changes import Change
from projections.db import Dialect, Tx

__all__ = ["View"]


class View(ABC):
    #: Tables this view owns, in creation order (dropped in reverse on reset).
    tables: tuple[str, ...] = ()
    #: Indexes only readers use (never the view's own writes): a rebuild builds them after the bulk load.
    query_indexes: tuple[str, ...] = ()

    @abstractmethod
    def create(self, tx: Tx, dialect: Dialect) -> None:
        """Create the tables and indexes if they do not exist."""

    @abstractmethod
    def apply(self, tx: Tx, changes: Sequence[Change]) -> None:
        """Apply changes in notification order, in the caller's transaction."""

    def suspend_derived(self, tx: Tx, dialect: Dialect) -> None:
        """Before a rebuild fills this view's tables in bulk (a shadow's replay, the SQLite swap's copy): stop
        keeping what :meth:`rebuild_derived` makes again from the rows in one pass. Nothing by default."""
        return None

    def rebuild_derived(self, tx: Tx, dialect: Dialect) -> None:
        """After the bulk fill, in the same transaction: make what :meth:`suspend_derived` stopped keeping from
        the rows, and keep it again. Nothing by default."""
        return None

    def reset(self, tx: Tx) -> None:
        for table in reversed(self.tables):
            tx.execute(f"DELETE FROM {table}")

    def dump(self, tx: Tx) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in a stable order (for rebuild-equals-live checks)."""
        return {table: sorted(tx.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in self.tables}
