"""Stored step outputs: what a re-run replays instead of calling the model or a tool again."""

from __future__ import annotations

from typing import Any

from mash_runtime.db import insert_rows
from mash_runtime.models import Request, StepCheckpoint

Step = tuple[str, str, dict[str, Any]]  # (step key, kind, output)


def load_checkpoints(req: Request) -> dict[str, dict[str, Any]]:
    return dict(StepCheckpoint.objects.filter(request=req).values_list("step_key", "output"))


def checkpoint_rows(req: Request, steps: list[Step]) -> list[StepCheckpoint]:
    return [StepCheckpoint(request_id=req.pk, step_key=key, kind=kind, output=output,
                           duration_ms=int(output.get("duration_ms", 0) or 0)) for key, kind, output in steps]


def store_steps(req: Request, steps: list[Step]) -> None:
    if steps:
        # A conflict means another worker stored the step first (it held the lease then); keep its row.
        insert_rows(checkpoint_rows(req, steps), ignore_conflicts=True)
