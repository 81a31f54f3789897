"""History that other apps own, pruned by `mash prune` with the runtime's.

`mash prune` (mash_runtime/management/commands/prune.py) deletes the runtime's history
itself; an app above the runtime whose tables grow the same way (the API request log,
mash_telemetry) registers a `HistoryTable` from its `AppConfig.ready()`, so the command
prunes it, counts it and offers its `--keep-...` flag without importing that app.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def add_task(self, description: str, total: int | None = ...) -> object: ...

    def advance(self, task: object, advance: float = ...) -> None: ...


@dataclass(frozen=True)
class HistoryTable:
    #: The report's line, e.g. "API log rows".
    label: str
    #: `--<keep_flag>` leaves this table alone, e.g. "keep-api-log".
    keep_flag: str
    keep_help: str
    #: `prune(cutoff, batch, dry, progress) -> rows deleted (or counted, when dry)`.
    prune: Callable[[datetime, int, bool, Progress], int]


_tables: dict[str, HistoryTable] = {}


def register_history_table(table: HistoryTable) -> None:
    """Add (or replace, by its label) a table `mash prune` prunes; call it from `ready()`."""
    _tables[table.label] = table


def history_tables() -> list[HistoryTable]:
    return list(_tables.values())
