"""A paginator that never runs an unbounded COUNT(*) over a big append-only table.

Unfiltered on PostgreSQL it takes the planner's row estimate (`pg_class.reltuples`,
kept fresh by autovacuum) once the table is big; otherwise it counts at most `CAP + 1`
rows, so the cost stays bounded whatever the table holds, and `capped` tells the page
to say "10,000+" instead of a number it does not know.
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db import connections
from django.utils.functional import cached_property

from mash_runtime import db

CAP = 10_000


class EstimatedCountPaginator(Paginator):
    cap = CAP
    capped = False

    def _estimate(self) -> int | None:
        qs = self.object_list
        if not hasattr(qs, "query") or qs.query.where or qs.query.is_sliced or qs.query.distinct:
            return None
        connection = connections[qs.db]
        if connection.vendor != "postgresql":
            return None
        estimate = db.estimated_rows(connection, qs.model._meta.db_table)
        # -1 (never analysed) or small tables: counting is cheap and exact.
        return estimate if estimate is not None and estimate > self.cap else None

    @cached_property
    def count(self) -> int:
        qs = self.object_list
        if not hasattr(qs, "query"):
            return len(qs)
        estimate = self._estimate()
        if estimate is not None:
            self.capped = True
            return estimate
        bounded = qs.order_by()[: self.cap + 1].count()
        if bounded > self.cap:
            self.capped = True
            return self.cap
        return bounded
