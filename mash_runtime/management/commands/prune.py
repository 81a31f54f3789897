"""`mash prune --older-than 30d [--dry-run]`: retention for runtime history.

Deletes, in batches (one transaction each), requests that finished before the cutoff
together with their events, checkpoints, interactions and subagent requests; finished
workflow runs with their events; and the rows older than the cutoff of the history
tables other apps register (`mash_runtime.retention`: the API request log). Submits'
Idempotency-Keys go with their requests, and any older than a day (`IdempotencyKey.KEEP`,
whatever the cutoff: the sweeper deletes them too) are deleted as well.

A request is only ever deleted with its whole family (a primary request and the
subagent requests it started), and only when every member has finished: a parked
parent still reads its child's result, and a resumed request is running again. Each
batch re-reads the statuses under a row lock, so a request resumed while prune runs is
left alone. Memory turns stay (they are the agent's conversation memory); they only
lose the link to their deleted request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mash_runtime import models as runtime_models
from mash_runtime.models import IdempotencyKey, Interaction, MemoryTurn, Request, RuntimeEvent, StepCheckpoint
from mash_runtime.retention import history_tables

AGE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*$", re.IGNORECASE)
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "": 86400}


def parse_age(text: str) -> timedelta:
    match = AGE.match(text or "")
    if not match:
        raise CommandError(f"--older-than wants an age like 30d, 12h, 90m or 2w, got {text!r}")
    amount, unit = int(match.group(1)), match.group(2).lower()
    if amount <= 0:
        raise CommandError("--older-than must be more than zero: prune never deletes what just finished")
    return timedelta(seconds=amount * UNIT_SECONDS[unit])


@dataclass
class Tally:
    requests: int = 0
    subagent_requests: int = 0
    events: int = 0
    checkpoints: int = 0
    interactions: int = 0
    workflow_runs: int = 0
    workflow_run_events: int = 0
    idempotency_keys: int = 0
    # Rows of the other apps' history tables, by their labels.
    tables: dict[str, int] = field(default_factory=dict)

    def add(self, other: "Tally") -> None:
        for f in fields(self):
            if f.name != "tables":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for label, count in other.tables.items():
            self.tables[label] = self.tables.get(label, 0) + count


def finished_before(cutoff):
    # A terminal request always has finished_at; created_at covers rows written before it existed.
    return Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)


def workflow_run_model():
    return getattr(runtime_models, "WorkflowRun", None)


def prunable_roots(cutoff):
    """Top-level requests that finished before the cutoff and have no unfinished child."""
    unfinished_child = Request.objects.filter(parent=OuterRef("pk")).exclude(status__in=Request.TERMINAL)
    qs = (
        Request.objects.filter(parent__isnull=True, status__in=Request.TERMINAL)
        .filter(finished_before(cutoff))
        .exclude(Exists(unfinished_child))
    )
    run_model = workflow_run_model()
    if run_model is not None and any(f.name == "workflow_run" for f in Request._meta.get_fields()):
        # A running workflow may still read its finished tasks' requests.
        qs = qs.exclude(Q(workflow_run__isnull=False) & ~Q(workflow_run__status__in=run_model.TERMINAL))
    return qs


def pk_batches(rows, batch: int):
    """The primary keys of `rows()` in ascending order, `batch` at a time. Each batch reads
    `rows()` again past the last key seen, so a row that stopped qualifying is not offered."""
    after = None
    while True:
        qs = rows().order_by("pk")
        if after is not None:
            qs = qs.filter(pk__gt=after)
        ids = list(qs.values_list("pk", flat=True)[:batch])
        if not ids:
            return
        after = ids[-1]
        yield ids


def family_of(root_ids: list) -> tuple[list, list]:
    """(roots whose whole family finished, every request id of those families)."""
    parent_of: dict = {}
    frontier = list(root_ids)
    unfinished_roots: set = set()
    root_of = {rid: rid for rid in root_ids}
    while frontier:
        rows = list(Request.objects.filter(parent_id__in=frontier).values_list("pk", "parent_id", "status"))
        frontier = []
        for pk, parent_id, status in rows:
            root = root_of[parent_id]
            root_of[pk] = root
            parent_of[pk] = parent_id
            frontier.append(pk)
            if status not in Request.TERMINAL:
                unfinished_roots.add(root)
    roots = [rid for rid in root_ids if rid not in unfinished_roots]
    keep = set(roots)
    return roots, [pk for pk, root in root_of.items() if root in keep]


class Command(BaseCommand):
    help = (
        "Delete runtime history older than a cutoff: finished requests with their events, checkpoints, "
        "interactions and subagent requests, finished workflow runs, and API request log rows. Requests "
        "that are queued, running or waiting for input are never touched; memory turns are kept."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than", default="30d", metavar="AGE",
            help="Delete what finished (or, for the API log, was logged) longer ago than AGE: a number with "
                 "s, m, h, d or w, e.g. 30d, 12h, 2w; a bare number means days. Default: 30d.",
        )
        parser.add_argument(
            "--dry-run", action="store_true",
            help="Count what would be deleted, with the same rules and batches, and delete nothing.",
        )
        parser.add_argument(
            "--batch-size", type=int, default=500, metavar="N",
            help="Requests, workflow runs or log rows per transaction (default 500). Smaller batches hold "
                 "locks for less time on a busy database.",
        )
        for table in history_tables():
            parser.add_argument(f"--{table.keep_flag}", action="store_true", help=table.keep_help)

    def handle(self, *args, **options):
        age = parse_age(options["older_than"])
        batch = options["batch_size"]
        if batch < 1:
            raise CommandError("--batch-size must be at least 1")
        dry = options["dry_run"]
        cutoff = timezone.now() - age
        console = Console(file=self.stdout._out, highlight=False)
        quiet = options["verbosity"] == 0
        tally = Tally()
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True, disable=quiet or not console.is_terminal,
        )
        try:
            with progress:
                self.prune_requests(cutoff, batch, dry, tally, progress)
                self.prune_workflow_runs(cutoff, batch, dry, tally, progress)
                for table in history_tables():
                    if not options[table.keep_flag.replace("-", "_")]:
                        tally.tables[table.label] = table.prune(cutoff, batch, dry, progress)
                self.prune_idempotency_keys(batch, dry, tally)
        except DatabaseError as exc:
            done = "nothing was deleted" if dry else "batches before the error stay deleted"
            raise CommandError(f"prune stopped on a database error ({done}): {exc}".replace("\n", " ")) from None
        if not quiet:
            self.report(console, tally, cutoff, dry, options["older_than"])
        return None

    # -- requests ------------------------------------------------------------------------

    def prune_requests(self, cutoff, batch: int, dry: bool, tally: Tally, progress: Progress) -> None:
        total = prunable_roots(cutoff).count()
        task = progress.add_task("requests", total=total)
        for candidates in pk_batches(lambda: prunable_roots(cutoff), batch):
            part = self.request_batch(candidates, dry)
            tally.add(part)
            progress.advance(task, len(candidates))

    def request_batch(self, candidates: list, dry: bool) -> Tally:
        part = Tally()
        with transaction.atomic():
            # Locked and re-read: a request resumed since it was selected is no longer terminal.
            rows = Request.objects if dry else Request.objects.select_for_update()
            roots = list(rows.filter(pk__in=candidates, status__in=Request.TERMINAL).values_list("pk", flat=True))
            roots, family = family_of(roots)
            if not family:
                return part
            if not dry:
                list(Request.objects.select_for_update().filter(pk__in=family).values_list("pk", flat=True))
            events = RuntimeEvent.objects.filter(request_id__in=family)
            checkpoints = StepCheckpoint.objects.filter(request_id__in=family)
            interactions = Interaction.objects.filter(request_id__in=family)
            part.requests = len(roots)
            part.subagent_requests = len(family) - len(roots)
            if dry:
                part.events, part.checkpoints, part.interactions = (
                    events.count(), checkpoints.count(), interactions.count())
                return part
            # Children first in one statement each: the big tables go by their indexed foreign key.
            part.events = events.delete()[0]
            part.checkpoints = checkpoints.delete()[0]
            part.interactions = interactions.delete()[0]
            MemoryTurn.objects.filter(request_id__in=family).update(request=None)
            Request.objects.filter(pk__in=family).delete()
        return part

    # -- workflow runs -----------------------------------------------------------------------

    def prune_workflow_runs(self, cutoff, batch: int, dry: bool, tally: Tally, progress: Progress) -> None:
        run_model = workflow_run_model()
        if run_model is None:
            return
        unfinished = Request.objects.filter(workflow_run=OuterRef("pk")).exclude(status__in=Request.TERMINAL)

        def runs():
            return (run_model.objects.filter(status__in=run_model.TERMINAL).filter(finished_before(cutoff))
                    .exclude(Exists(unfinished)))

        task = progress.add_task("workflow runs", total=runs().count())
        for ids in pk_batches(runs, batch):
            with transaction.atomic():
                rows = run_model.objects if dry else run_model.objects.select_for_update()
                locked = list(rows.filter(pk__in=ids, status__in=run_model.TERMINAL).values_list("pk", flat=True))
                events = getattr(runtime_models, "WorkflowRunEvent", None)
                if dry:
                    tally.workflow_runs += len(locked)
                    if events is not None:
                        tally.workflow_run_events += events.objects.filter(run_id__in=locked).count()
                else:
                    if events is not None:
                        tally.workflow_run_events += events.objects.filter(run_id__in=locked).delete()[0]
                    run_model.objects.filter(pk__in=locked).delete()
                    tally.workflow_runs += len(locked)
            progress.advance(task, len(ids))

    # -- Idempotency-Keys ---------------------------------------------------------------------------

    def prune_idempotency_keys(self, batch: int, dry: bool, tally: Tally) -> None:
        """Keys past `IdempotencyKey.KEEP` (those of pruned requests went with them)."""
        expired = IdempotencyKey.expired()
        if dry:
            tally.idempotency_keys = expired.count()
            return
        while True:
            ids = list(expired.order_by("pk").values_list("pk", flat=True)[:batch])
            if not ids:
                break
            tally.idempotency_keys += IdempotencyKey.objects.filter(pk__in=ids).delete()[0]

    # -- report ------------------------------------------------------------------------------------

    def report(self, console: Console, tally: Tally, cutoff, dry: bool, age: str) -> None:
        verb = "Would delete" if dry else "Deleted"
        console.print(f"{verb} what finished before {cutoff:%Y-%m-%d %H:%M:%S %Z} (older than {age}):")
        lines = [
            ("requests", tally.requests),
            ("subagent requests", tally.subagent_requests),
            ("events", tally.events),
            ("checkpoints", tally.checkpoints),
            ("interactions", tally.interactions),
            ("workflow runs", tally.workflow_runs),
            ("workflow run events", tally.workflow_run_events),
            *((table.label, tally.tables.get(table.label, 0)) for table in history_tables()),
            ("expired idempotency keys", tally.idempotency_keys),
        ]
        for name, count in lines:
            console.print(f"  {count:>10,}  {name}")
        kept = Request.objects.filter(created_at__lt=cutoff).exclude(status__in=Request.TERMINAL).count()
        if kept:
            console.print(f"Left alone: {kept:,} unfinished request(s) older than the cutoff.")
        if dry:
            console.print("Dry run: nothing was deleted.")
