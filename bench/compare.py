"""Compare two revisions under the HTTP load, interleaved: A, B, A, B, ...

This machine's speed drifts by a third or more within minutes, so two runs of one
revision far apart in time differ more than most changes do. This runs this checkout's
`bench/http_load.py` against each revision's code in turn (a `git worktree` of it, on a
fresh database each time; the load generator is the same for both) and prints, per pair, the throughput, p50 and CPU per request, and the CPU
per request divided by the client's own CPU per request: the client does the same work
in every run, so that ratio tracks the code and not the machine.

    python bench/compare.py HEAD~1 HEAD                       # 3 pairs at 8 sessions
    python bench/compare.py d8ac172 . --rounds 5 --level 1    # "." is the working tree
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def checkout(rev: str, into: Path) -> Path:
    """The tree to run for `rev`: the working tree itself for ".", else a worktree of it."""
    if rev == ".":
        return REPO
    path = into / rev.replace("/", "_").replace("~", "-").replace("^", "-")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", "-q", str(path), rev], check=True)
    return path


def run_once(tree: Path, args) -> dict:
    """One run of this checkout's http_load.py (the same load generator for both) against
    `tree`'s code (its servers, its bench host); its row for the level."""
    command = [sys.executable, str(REPO / "bench" / "http_load.py"), "--levels", str(args.level),
               "--requests", str(args.requests), "--json", "--tree", str(tree)]
    if not args.sqlite:
        command += ["--postgres"] + ([] if args.no_redis else ["--redis"])
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"http_load failed in {tree}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout[done.stdout.index("{"):])["levels"][0]


def summary(row: dict) -> dict:
    cpu = row["cpu_ms_per_request"]
    total = sum(cpu.values())
    return {"req/s": row["req_per_s"], "p50": row["p50_total"], "cpu": total, "client": cpu["client"],
            "ratio": total / cpu["client"] if cpu["client"] else float("nan"),
            **{role: cpu[role] for role in ("web", "worker", "postgres")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", help="the baseline revision (any git revision, or . for the working tree)")
    parser.add_argument("b", help="the revision to compare with it")
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--level", type=int, default=8, help="concurrent sessions (default 8)")
    parser.add_argument("--requests", type=int, default=300, help="requests per run (default 300)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite and the ORM broker instead of PostgreSQL + Redis")
    parser.add_argument("--no-redis", action="store_true",
                        help="PostgreSQL alone: its ORM broker and no Redis channel layer (as users without Redis run)")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 110))  # the table is wider than a pipe's 80 columns
    scratch = Path(tempfile.mkdtemp(prefix="mash-compare-"))
    trees = {}
    results: dict[str, list[dict]] = {args.a: [], args.b: []}
    try:
        for rev in (args.a, args.b):
            trees[rev] = checkout(rev, scratch)
        for round_number in range(1, args.rounds + 1):
            for rev in (args.a, args.b):
                with console.status(f"round {round_number} of {args.rounds}: {rev}"):
                    results[rev].append(summary(run_once(trees[rev], args)))
    finally:
        for rev, tree in trees.items():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
        shutil.rmtree(scratch, ignore_errors=True)
    columns = ("req/s", "p50", "cpu", "web", "worker", "postgres", "client", "ratio")
    table = Table(title=f"{args.level} session(s), {args.requests} requests per run; "
                        "cpu = ms of CPU per request, ratio = cpu / client")
    for column in ("round", "revision", *columns):
        table.add_column(column, justify="right")
    for index in range(args.rounds):
        for rev in (args.a, args.b):
            row = results[rev][index]
            table.add_row(str(index + 1), rev, *(f"{row[c]:.1f}" if c != "ratio" else f"{row[c]:.2f}" for c in columns))
    for rev in (args.a, args.b):
        rows = results[rev]
        table.add_row("median", rev, *(f"{statistics.median(r[c] for r in rows):.{2 if c == 'ratio' else 1}f}"
                                         for c in columns), style="bold")
    console.print(table)
    base = statistics.median(r["ratio"] for r in results[args.a])
    other = statistics.median(r["ratio"] for r in results[args.b])
    wins = sum(b["ratio"] < a["ratio"] for a, b in zip(results[args.a], results[args.b]))
    console.print(f"{args.b} vs {args.a}: CPU per request (normalised by the client) {100 * (other / base - 1):+.1f}% "
                  f"at the median; lower in {wins} of {args.rounds} pairs")


if __name__ == "__main__":
    main()
