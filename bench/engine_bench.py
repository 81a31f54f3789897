"""Engine throughput and latency: submit -> terminal through a real django-q2 cluster.

Each of S sessions is a client that submits a request, waits for its terminal state,
and submits the next (closed loop). Reports per-request engine time (accepted ->
terminal, from the database's own timestamps) p50/p95 and completed requests/s.

    python bench/engine_bench.py                       # SQLite + ORM broker
    python bench/engine_bench.py --postgres --redis    # PostgreSQL + Redis broker
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.http_load import add_backend_flags, fresh_backends, percentile  # noqa: E402

HOST = "bench.bench_host:build_host"


def configure(args) -> dict[str, str]:
    data_dir = tempfile.mkdtemp(prefix="mash-bench-")
    env = {"MASH_DATA_DIR": data_dir, "MASH_HOST_APP": HOST, "MASH_WORKERS": str(args.workers),
           "MASH_QUEUE_POLL": str(args.poll), "MASH_LOG_LEVEL": "WARNING", "PYTHONPATH": str(REPO)}
    fresh_backends(env, args, "mash_bench", redis_db=15)
    os.environ.update(env)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
    return env


def run_level(sessions: int, per_session: int, progress) -> dict:
    from django.db import close_old_connections

    from mash_runtime.models import Request
    from mash_runtime.services import submit_request

    latencies: list[float] = []
    lock = threading.Lock()
    failures = [0]

    def client(index: int) -> None:
        for _ in range(per_session):
            rid = submit_request("bench", "go", session_id=f"bench-{sessions}-{index}")["request_id"]
            while True:
                row = Request.objects.filter(pk=rid).values_list("status", "created_at", "finished_at").first()
                if row[0] in Request.TERMINAL:
                    break
                time.sleep(0.005)
            with lock:
                if row[0] != "completed":
                    failures[0] += 1
                latencies.append((row[2] - row[1]).total_seconds() * 1000)
                progress()
        close_old_connections()

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    return {"sessions": sessions, "requests": len(latencies), "failed": failures[0],
            "p50_ms": statistics.median(latencies), "p95_ms": percentile(latencies, 0.95),
            "req_per_s": len(latencies) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flags(parser, redis_db=15)
    parser.add_argument("--sessions", default="1,8,32", help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=120, help="requests per level (default 120)")
    args = parser.parse_args()
    env = configure(args)

    import django

    django.setup()
    from django.core.management import call_command
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    with console.status("migrating the benchmark database"):
        call_command("migrate", verbosity=0)
    cluster = subprocess.Popen([sys.executable, "manage.py", "qcluster"], cwd=REPO, env={**os.environ, **env},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        time.sleep(2)
        levels = [int(x) for x in args.sessions.split(",")]
        with Progress(console=console) as progress:
            for level in levels:
                per_session = max(1, args.requests // level)
                task = progress.add_task(f"{level} session(s)", total=per_session * level)
                rows.append(run_level(level, per_session, lambda: progress.advance(task)))
    finally:
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
        if args.postgres:
            from django.db import connections

            connections.close_all()
            name = env["DATABASE_URL"].rsplit("/", 1)[1]
            subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
                            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)
    backend = ("PostgreSQL" if args.postgres else "SQLite") + (" + Redis broker" if args.redis else " + ORM broker")
    table = Table(title=f"Engine: accepted -> terminal ({backend}, {args.workers} workers)")
    for column in ("sessions", "requests", "failed", "p50 ms", "p95 ms", "completed req/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["sessions"]), str(r["requests"]), str(r["failed"]), f"{r['p50_ms']:.1f}",
                      f"{r['p95_ms']:.1f}", f"{r['req_per_s']:.1f}")
    console.print(table)


if __name__ == "__main__":
    main()
