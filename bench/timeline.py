"""Where one request's time goes, at one session, on the path users run.

Serves `mash host serve --api-key` of this checkout (bench/vs_original.py's one-agent app,
AnthropicProvider over HTTP to tests/fakes/slow_anthropic.py) on a fresh database, sends
`--requests` requests one after another, and lines up for each request the client's own
marks (POST sent, POST answered, stream open, terminal event read) with the times the
server stored: the request row's `created_at` and every event's `created_at` (set when
the event was made, in the process that made it; one machine, one clock). Prints the
median and p90 of each step between consecutive marks, so a change to the chain (a
queue hop, a round trip, a doorbell) shows where it landed.

    python bench/timeline.py --redis                  # PostgreSQL + Redis
    python bench/timeline.py                          # PostgreSQL alone (LISTEN/NOTIFY)
    python bench/timeline.py --sqlite                 # the SQLite default
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.http_load import percentile  # noqa: E402
from bench.vs_original import Ours  # noqa: E402


async def one(client: httpx.AsyncClient, base: str, session: str) -> dict:
    marks = {"post sent": time.time()}
    response = await client.post(f"{base}/api/v1/agent/bench/request", json={"message": "go", "session_id": session})
    marks["post answered"] = time.time()
    rid = response.json()["data"]["request_id"]
    async with client.stream("GET", f"{base}/api/v1/agent/bench/request/{rid}/events") as stream:
        marks["stream open"] = time.time()
        async for line in stream.aiter_lines():
            if line.startswith("event: request.") and line[7:] in ("request.completed", "request.error"):
                marks["terminal read"] = time.time()
                break
    return {"rid": rid, "client": marks}


async def drive(base: str, headers: dict, count: int, warmup: int) -> list[dict]:
    async with httpx.AsyncClient(timeout=60, headers=headers) as client:
        for _ in range(warmup):
            await one(client, base, "timeline-warm")
        return [await one(client, base, "timeline") for _ in range(count)]


def stored_times(host: Ours, rids: list[str]) -> dict[str, list[tuple[str, float]]]:
    """request id -> [(mark, epoch seconds)]: the row's creation, then its events by seq."""
    ids = ",".join(f"'{r}'" for r in rids)
    rows_sql = f"SELECT id, created_at FROM mash_runtime_request WHERE id IN ({ids})"
    events_sql = (f"SELECT request_id, event_type, created_at FROM mash_runtime_runtimeevent "
                  f"WHERE request_id IN ({ids}) ORDER BY request_id, seq")
    out: dict[str, list[tuple[str, float]]] = {r: [] for r in rids}
    if host.uses_postgres:
        def query(sql: str) -> list[list[str]]:
            text = subprocess.run(["psql", "-At", "-F", "\t", "-h", "127.0.0.1", "-U", "postgres", "-d", host.db,
                                   "-c", sql], check=True, capture_output=True, text=True).stdout
            return [line.split("\t") for line in text.splitlines() if line]
        for rid, created in query(rows_sql.replace("created_at", "extract(epoch from created_at)")):
            out[rid].append(("row created", float(created)))
        for rid, kind, at in query(events_sql):
            out[rid].append((kind, float(at)))
    else:
        db = sqlite3.connect(host.dir / "data" / "mash.sqlite3")
        hexed = {r.replace("-", ""): r for r in rids}
        ids = ",".join(f"'{h}'" for h in hexed)
        for rid, created in db.execute(f"SELECT id, created_at FROM mash_runtime_request WHERE id IN ({ids})"):
            out[hexed[rid]].append(("row created", _iso_epoch(created)))
        for rid, kind, at in db.execute(f"SELECT request_id, event_type, created_at FROM mash_runtime_runtimeevent "
                                        f"WHERE request_id IN ({ids}) ORDER BY request_id, seq"):
            out[hexed[rid]].append((kind, float(at)))
    return out


def _iso_epoch(text: str) -> float:
    from datetime import datetime, timezone

    stamp = datetime.fromisoformat(text)
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="requests measured, one after another (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="requests answered first, not measured (default 20)")
    parser.add_argument("--redis", action="store_true", help="PostgreSQL + Redis (broker and channel layer)")
    parser.add_argument("--sqlite", action="store_true", help="the SQLite default instead of PostgreSQL")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds the fake takes per model call (default 0)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tests.fakes.slow_anthropic import run_slow_anthropic

    console = Console()
    scratch = Path(tempfile.mkdtemp(prefix="mash-timeline-"))
    backend = "sqlite" if args.sqlite else "postgres"
    with run_slow_anthropic(args.delay, log_path=scratch / "fake.log") as fake:
        host = Ours(scratch, 1, fake.env, backend, args.redis and not args.sqlite, args.workers)
        try:
            with console.status(f"starting {host.label}"):
                host.start(host.env, REPO)
            with console.status(f"{args.warmup} + {args.requests} requests, one at a time"):
                results = asyncio.run(drive(host.base, host.headers, args.requests, args.warmup))
            stored = stored_times(host, [r["rid"] for r in results])
        finally:
            host.stop()
    steps: dict[tuple[str, str], list[float]] = {}
    order: list[tuple[str, str]] = []
    totals = []
    for r in results:
        c = r["client"]
        marks = [("post sent", c["post sent"]), *stored[r["rid"]], ("post answered", c["post answered"]),
                 ("stream open", c["stream open"]), ("terminal read", c["terminal read"])]
        marks.sort(key=lambda m: m[1])
        totals.append((c["terminal read"] - c["post sent"]) * 1000)
        for (a, ta), (b, tb) in zip(marks, marks[1:]):
            key = (a, b)
            if key not in steps:
                steps[key] = []
                order.append(key)
            steps[key].append((tb - ta) * 1000)
    table = Table(title=f"{host.label}: {len(results)} requests, one session; p50 POST -> terminal "
                        f"{statistics.median(totals):.1f} ms")
    for col in ("from", "to", "seen in", "p50 ms", "p90 ms"):
        table.add_column(col, justify="right" if "ms" in col or col == "seen in" else "left")
    for key in sorted(order, key=lambda k: -len(steps[k])):
        values = steps[key]
        if len(values) < len(results) // 10:
            continue
        table.add_row(key[0], key[1], f"{len(values)}", f"{statistics.median(values):.2f}",
                      f"{percentile(values, 0.9):.2f}")
    console.print(table)


if __name__ == "__main__":
    main()
