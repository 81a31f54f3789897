"""Memory search latency over a large turn table, on a fresh database.

Bulk-inserts N memory turns (default 100,000) into a fresh database (an SQLite file in a
temp dir, or a new PostgreSQL database with --postgres), so the FTS5 triggers or the
generated tsvector columns index them exactly as in production, then times searches
through `mash_runtime.read_services.memory_search` (the telemetry route's entry point: parse,
scope, retrieve, normalise, hydrate, preview) and reports p50/p95 per query shape.

Texts are drawn from a synthetic Zipf-distributed vocabulary, so there are very common
words (matching tens of thousands of turns), mid-frequency and rare ones.

    python bench/memory_search_bench.py                  # SQLite
    python bench/memory_search_bench.py --postgres       # PostgreSQL on 127.0.0.1:5432
    python bench/memory_search_bench.py --turns 20000 --queries 50
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "jo", "qu", "bre",
             "stra", "pli", "on", "ar", "el", "ix", "um"]


def configure(args) -> str:
    data_dir = tempfile.mkdtemp(prefix="mash-memsearch-bench-")
    os.environ.update({"MASH_DATA_DIR": data_dir, "MASH_LOG_LEVEL": "WARNING", "MASH_DB_POOL": "false"})
    label = f"SQLite file under {data_dir}"
    if args.postgres:
        import psycopg

        db = f"mash_memsearch_bench_{os.getpid()}"
        with psycopg.connect(f"postgresql://postgres@{args.pg_host}:{args.pg_port}/postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{db}"')
        os.environ["DATABASE_URL"] = f"postgres://postgres@{args.pg_host}:{args.pg_port}/{db}"
        label = f"PostgreSQL database {db}"
    else:
        os.environ.pop("DATABASE_URL", None)
        os.environ.pop("MASH_DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    return label


def drop_postgres(args) -> None:
    import psycopg
    from django.db import connection

    name = connection.settings_dict["NAME"]
    connection.close()
    with psycopg.connect(f"postgresql://postgres@{args.pg_host}:{args.pg_port}/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


class TextSource:
    def __init__(self, vocab: list[str], rng: random.Random):
        self.vocab = vocab
        self.rng = rng
        weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf, s = 1
        self.cum = list(itertools.accumulate(weights))

    def text(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.vocab, cum_weights=self.cum, k=self.rng.randint(low, high)))


def populate(args, rng: random.Random) -> tuple[list[str], list[str]]:
    from django.db import connection, transaction

    from mash_runtime.models import Agent, MemoryTurn, Session

    vocab = vocabulary(args.vocab, rng)
    source = TextSource(vocab, rng)
    agents = [Agent.objects.create(agent_id=f"agent{i}", role="primary" if i == 0 else "subagent")
              for i in range(args.agents)]
    sessions = Session.objects.bulk_create(
        [Session(agent=agents[i % len(agents)], session_id=f"s{i}") for i in range(args.sessions)]
    )
    started = time.perf_counter()
    batch: list[MemoryTurn] = []
    for i in range(args.turns):
        session = sessions[rng.randrange(len(sessions))]
        batch.append(MemoryTurn(agent_id=session.agent_id, session=session, user_message=source.text(5, 40),
                                agent_response=source.text(20, 120)))
        if len(batch) == args.batch or i == args.turns - 1:
            with transaction.atomic():
                MemoryTurn.objects.bulk_create(batch)
            batch = []
            done = i + 1
            if done % (args.batch * 10) == 0 or done == args.turns:
                print(f"  inserted {done:,} turns ({time.perf_counter() - started:.1f} s)", flush=True)
    insert_seconds = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"insert: {args.turns:,} turns in {insert_seconds:.1f} s ({args.turns / insert_seconds:,.0f} turns/s), "
          f"indexed by {'triggers (FTS5)' if connection.vendor == 'sqlite' else 'generated tsvector columns + GIN'}")
    return vocab, [s.session_id for s in sessions]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", action="store_true", help="use a fresh PostgreSQL database")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", default="5432")
    parser.add_argument("--keep", action="store_true", help="keep the PostgreSQL database afterwards")
    parser.add_argument("--turns", type=int, default=100_000)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=2_000)
    parser.add_argument("--vocab", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=2_000)
    parser.add_argument("--queries", type=int, default=100, help="timed queries per shape")
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    label = configure(args)
    from django.core.management import call_command
    from django.db import connection

    try:
        call_command("migrate", verbosity=0)
        print(f"database: {label} ({connection.vendor})")
        rng = random.Random(args.seed)
        vocab, session_ids = populate(args, rng)
        run_queries(args, rng, vocab, session_ids)
    finally:
        if args.postgres and not args.keep:
            drop_postgres(args)


def run_queries(args, rng: random.Random, vocab: list[str], session_ids: list[str]) -> None:
    from mash_runtime.memory.search import search_memory
    from mash_runtime.models import MemoryTurn
    from mash_runtime.read_services import memory_search

    common, mid, rare = vocab[:20], vocab[200:2000], vocab[5000:]

    def df(word: str, column: str) -> int:
        return MemoryTurn.objects.filter(**{f"{column}__contains": f" {word} "}).count()

    shapes = {
        "rare word (@agent:)": lambda: (f"@agent: {rng.choice(rare)}", {}),
        "mid word (@agent:)": lambda: (f"@agent: {rng.choice(mid)}", {}),
        "common word (@agent:)": lambda: (f"@agent: {rng.choice(common)}", {}),
        "two words (@user:)": lambda: (f"@user: {rng.choice(mid)} {rng.choice(mid)}", {}),
        "phrase (@agent:)": lambda: (f'@agent: "{rng.choice(common)} {rng.choice(mid)}"', {}),
        "mid word, agent filter": lambda: (f"@agent: {rng.choice(mid)}", {"app_id": "agent0"}),
        "common word, session filter": lambda: (f"@agent: {rng.choice(common)}",
                                                {"session_id": rng.choice(session_ids)}),
    }
    print(f"\nqueries: {args.queries} per shape, limit {args.limit}, via queries.memory_search "
          f"(common-word document frequency ~{df(common[0], 'agent_response'):,} turns)")
    print(f"{'shape':<30} {'p50 ms':>8} {'p95 ms':>8} {'mean hits':>10}")
    everything: list[float] = []
    for name, make in shapes.items():
        for _ in range(3):  # warm-up
            q, params = make()
            memory_search(q, limit=args.limit, **params)
        times, hits = [], []
        for _ in range(args.queries):
            q, params = make()
            t0 = time.perf_counter()
            result = memory_search(q, limit=args.limit, **params)
            times.append((time.perf_counter() - t0) * 1000)
            hits.append(len(result["results"]))
        everything.extend(times)
        print(f"{name:<30} {percentile(times, 0.5):>8.2f} {percentile(times, 0.95):>8.2f} "
              f"{statistics.mean(hits):>10.1f}")
    # The runtime tool's shape: unprefixed (both columns, best score per turn), one agent.
    times = []
    for _ in range(args.queries):
        q = f"{rng.choice(mid)} {rng.choice(rare)}"
        t0 = time.perf_counter()
        search_memory(q, agent_id="agent0", limit=args.limit)
        times.append((time.perf_counter() - t0) * 1000)
    everything.extend(times)
    print(f"{'unprefixed 2 words (tool)':<30} {percentile(times, 0.5):>8.2f} {percentile(times, 0.95):>8.2f}")
    print(f"{'ALL':<30} {percentile(everything, 0.5):>8.2f} {percentile(everything, 0.95):>8.2f}")


if __name__ == "__main__":
    main()
