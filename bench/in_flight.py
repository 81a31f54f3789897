"""Requests in flight: `mash host serve` with the real AnthropicProvider and a slow model.

Starts a local Anthropic-compatible fake that answers every call after `--delay` seconds
and counts the calls it holds at once (tests/fakes/slow_anthropic.py), then `mash host
serve` (API key on, the provider pointed at the fake by ANTHROPIC_BASE_URL) on a fresh
database, and drives it with S closed-loop sessions over HTTP + SSE (POST, follow the
stream to its terminal event, repeat). Prints throughput, p50/p95 POST -> terminal,
streams that ended without a terminal event, the most model calls in flight the fake
saw, the peak RSS (and PSS: forked processes share pages) of the web process and of the
worker cluster, and CPU per request by process.

With `--parked N` it measures streams instead: N requests parked on an approval, each
followed by its own SSE stream on the one web process; it reports how many streams
delivered their first frame, the web process's RSS before and after (and per stream),
and how long /api/v1/health took while they were open.

    python bench/in_flight.py --delay 1 --sessions 64 --requests 1280 --postgres --redis
    python bench/in_flight.py --delay 5 --sessions 256 --requests 1024 --concurrency 160 --postgres --redis
    python bench/in_flight.py --delay 1 --sessions 64 --requests 640            # the SQLite default
    python bench/in_flight.py --parked 2000 --postgres --redis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.http_load import (TLS, KeyedHost, cpu_by_role, drop_database, free_port, fresh_backends,  # noqa: E402
                             percentile, raise_fd_limit, rss_mib, run_level)
from tests.fakes.slow_anthropic import run_slow_anthropic  # noqa: E402

HOST_APP = "bench.bench_host:build_model_host"


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def tree(pid: int) -> list[int]:
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        stack.extend(children(current))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def memory(pids: list[int]) -> tuple[float, float]:
    rss = pss = 0.0
    for pid in pids:
        try:
            rss += rss_mib(pid)
        except OSError:
            continue
        pss += pss_mib(pid)
    return rss, pss


class Host(KeyedHost):
    """`mash host serve` on a fresh database, its web and worker process trees found by name."""

    def __init__(self, args, fake_env: dict[str, str]):
        self.args = args
        self.port = free_port()
        self.key = "bench-" + secrets.token_hex(8)
        self.data_dir = tempfile.mkdtemp(prefix="mash-inflight-")
        self.env = {**os.environ, **fake_env, "MASH_DATA_DIR": self.data_dir, "PYTHONPATH": str(REPO),
                    "MASH_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "mash_project.settings"}
        for name in ("DATABASE_URL", "MASH_DATABASE_URL", "MASH_REDIS_URL"):
            self.env.pop(name, None)
        self.db = fresh_backends(self.env, args, "mash_inflight", redis_db=13)
        self.proc: subprocess.Popen | None = None
        self.log = open(Path(self.data_dir) / "serve.log", "wb")

    def start(self) -> None:
        argv = [sys.executable, "-m", "mash_project.cli", "host", "serve", "--host-app", HOST_APP,
                "--port", str(self.port), "--api-key", self.key, "--workers", str(self.args.workers)]
        if self.args.concurrency:
            argv += ["--concurrency", str(self.args.concurrency)]
        self.proc = subprocess.Popen(argv, cwd=REPO, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=raise_fd_limit)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"mash host serve exited: see {self.log.name}")
            try:
                health = httpx.get(f"{self.base}/api/v1/health", headers=self.headers, timeout=5)
                if health.status_code == 200 and health.json()["data"]["workers"]["live"] >= self.args.workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit("mash host serve did not become ready with its workers")

    def web_pids(self) -> list[int]:
        return [p for c in children(self.proc.pid) if "mash_project.asgi:application" in cmdline(c) for p in tree(c)]

    def worker_pids(self) -> list[int]:
        return [p for c in children(self.proc.pid) if "qcluster" in cmdline(c) for p in tree(c)]

    def phases(self) -> dict[str, float]:
        """Engine-side medians and p95s from the request rows (seconds): queued (created ->
        claimed), running (claimed -> finished), total (created -> finished)."""
        sql = ("SELECT created_at, started_at, finished_at FROM mash_runtime_request "
               "WHERE finished_at IS NOT NULL AND started_at IS NOT NULL")
        if self.db:
            import psycopg

            with psycopg.connect(self.env["DATABASE_URL"].replace("postgres://", "postgresql://")) as conn:
                rows = conn.execute(sql).fetchall()
        else:
            import sqlite3
            from datetime import datetime

            with sqlite3.connect(Path(self.data_dir) / "mash.sqlite3") as conn:
                rows = [tuple(datetime.fromisoformat(v) for v in row) for row in conn.execute(sql)]
        out = {}
        for name, pick in (("queued", lambda r: r[1] - r[0]), ("running", lambda r: r[2] - r[1]),
                           ("total", lambda r: r[2] - r[0])):
            values = [pick(r).total_seconds() for r in rows]
            out[f"{name}_p50"], out[f"{name}_p95"] = percentile(values, 0.5), percentile(values, 0.95)
        return out

    def stop(self) -> None:
        if not self.ask_to_stop():
            os.killpg(self.proc.pid, signal.SIGKILL)
        drop_database(self.db)


class Peaks:
    """Samples the memory of the web and worker trees every half second while a load runs."""

    def __init__(self, host: Host):
        self.host = host
        self.web = (0.0, 0.0)
        self.worker = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            web, worker = memory(self.host.web_pids()), memory(self.host.worker_pids())
            self.web = max(self.web, web)
            self.worker = max(self.worker, worker)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


async def parked_streams(host: Host, count: int) -> dict:
    """`count` requests parked on an approval, each followed by its own SSE stream."""
    limits = httpx.Limits(max_connections=count + 20, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, headers=host.headers, limits=httpx.Limits(max_connections=32), verify=TLS) as client:
        async def submit(i: int) -> str:
            response = await client.post(f"{host.base}/api/v1/agent/bench-park/request",
                                         json={"message": "park", "session_id": f"park-{i}"})
            return response.json()["data"]["request_id"]

        ids = []
        for start in range(0, count, 100):
            ids += await asyncio.gather(*(submit(i) for i in range(start, min(count, start + 100))))

        async def parked() -> int:
            statuses = await asyncio.gather(*(client.get(f"{host.base}/api/v1/agent/bench-park/request/{rid}/status")
                                              for rid in ids[-50:]))
            return sum(r.json()["data"]["status"] == "waiting_input" for r in statuses)

        for _ in range(600):
            if await parked() == min(50, count):
                break
            await asyncio.sleep(0.5)
    web_pid = host.web_pids()[0]
    rss_before = rss_mib(web_pid)
    first_frames = 0
    interaction_frames = 0
    stop = asyncio.Event()
    all_open = asyncio.Event()
    probes: list[float] = []  # while the streams open
    steady: list[float] = []  # once every stream has its frames
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), limits=limits, headers=host.headers, verify=TLS) as client:
        async def follow(rid: str) -> None:
            nonlocal first_frames, interaction_frames
            seen_first = False
            try:
                async with client.stream("GET", f"{host.base}/api/v1/agent/bench-park/request/{rid}/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("event: "):
                            if not seen_first:
                                seen_first = True
                                first_frames += 1
                            if line == "event: request.interaction.create":
                                interaction_frames += 1
                                await stop.wait()
                                return
            except httpx.HTTPError:
                return

        async def probe() -> None:
            async with httpx.AsyncClient(timeout=60, headers=host.headers, verify=TLS) as prober:
                while not stop.is_set():
                    started = time.perf_counter()
                    await prober.get(f"{host.base}/api/v1/health")
                    (steady if all_open.is_set() else probes).append((time.perf_counter() - started) * 1000)
                    await asyncio.sleep(1.0)

        opened = time.perf_counter()
        tasks = [asyncio.create_task(follow(rid)) for rid in ids]
        prober = asyncio.create_task(probe())
        deadline = time.perf_counter() + 300
        while interaction_frames < count and time.perf_counter() < deadline:
            await asyncio.sleep(0.5)
        all_frames_s = time.perf_counter() - opened
        all_open.set()
        await asyncio.sleep(20)  # the steady state, past the readers' first polls
        rss_after = rss_mib(web_pid)
        stop.set()
        await prober
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"streams": count, "first_frame": first_frames, "interaction_frame": interaction_frames,
            "seconds_to_all_frames": all_frames_s, "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "kib_per_stream": (rss_after - rss_before) * 1024 / max(1, count),
            "health_ms_opening_p50": percentile(probes, 0.5),
            "health_ms_opening_max": max(probes) if probes else float("nan"),
            "health_ms_open_p50": percentile(steady, 0.5), "health_ms_open_max": max(steady) if steady else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", action="store_true", help="a fresh PostgreSQL database on 127.0.0.1:5432 "
                                                                "(default: the SQLite default)")
    parser.add_argument("--redis", action="store_true", help="Redis broker and channel layer on 127.0.0.1:6379/13")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds each model call takes (default 1)")
    parser.add_argument("--sessions", default="64", help="concurrent sessions, comma-separated levels (default 64)")
    parser.add_argument("--requests", type=int, default=640, help="requests per level (default 640)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (mash host serve --workers, default 2)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="requests in flight per worker process (--concurrency; default the server's)")
    parser.add_argument("--parked", type=int, default=0,
                        help="measure N parked requests with a stream each instead of the load (default 0: off)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    raise_fd_limit()
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    backend = ("PostgreSQL" if args.postgres else "SQLite") + (" + Redis" if args.redis else " + ORM broker")
    rows, streams = [], None
    with run_slow_anthropic(args.delay) as fake:
        host = Host(args, fake.env)
        try:
            with console.status(f"starting mash host serve ({backend}) and its workers"):
                host.start()
            if args.parked:
                with console.status(f"parking {args.parked} requests and opening a stream for each"):
                    streams = asyncio.run(parked_streams(host, args.parked))
            else:
                with Progress(console=console, transient=True) as progress:
                    for level in [int(x) for x in args.sessions.split(",")]:
                        task = progress.add_task(f"{level} sessions", total=max(1, args.requests // level) * level)
                        fake.reset()
                        roots = {"web": host.web_pids()[:1], "worker": host.worker_pids()[:1]}
                        before = cpu_by_role(roots)
                        with Peaks(host) as peaks:
                            row = asyncio.run(run_level([host.base], level, args.requests,
                                                        lambda: progress.advance(task), headers=host.headers))
                        after = cpu_by_role(roots)
                        done = max(1, row["requests"] - row["no_terminal"])
                        row["cpu_ms_per_request"] = {k: (after[k] - before[k]) * 1000 / done for k in after}
                        row["max_in_flight"] = fake.stats()["max_in_flight"]
                        row["web_rss_mib"], row["web_pss_mib"] = peaks.web
                        row["worker_rss_mib"], row["worker_pss_mib"] = peaks.worker
                        rows.append(row)
                if rows:
                    rows[-1]["engine"] = host.phases()
        finally:
            host.stop()
    if args.json:
        print(json.dumps({"backend": backend, "delay": args.delay, "levels": rows, "streams": streams}, indent=2))
        return
    if rows:
        slots = args.concurrency or "default"
        table = Table(title=f"In flight: {backend}, model {args.delay:g} s, {args.workers} workers x {slots} slots")
        for column in ("sessions", "requests", "req/s", "p50 s", "p95 s", "no terminal", "calls in flight",
                       "web RSS/PSS MiB", "workers RSS/PSS MiB"):
            table.add_column(column, justify="right")
        for r in rows:
            table.add_row(str(r["sessions"]), str(r["requests"]), f"{r['req_per_s']:.1f}",
                          f"{r['p50_total'] / 1000:.2f}", f"{r['p95_total'] / 1000:.2f}", str(r["no_terminal"]),
                          str(r["max_in_flight"]), f"{r['web_rss_mib']:.0f} / {r['web_pss_mib']:.0f}",
                          f"{r['worker_rss_mib']:.0f} / {r['worker_pss_mib']:.0f}")
        console.print(table)
        cpu = Table(title="CPU ms per completed request, by process")
        roles = list(rows[0]["cpu_ms_per_request"])
        for column in ("sessions", *roles):
            cpu.add_column(column, justify="right")
        for r in rows:
            cpu.add_row(str(r["sessions"]), *(f"{r['cpu_ms_per_request'][k]:.1f}" for k in roles))
        console.print(cpu)
        for r in rows:
            for error, count in r.get("errors", {}).items():
                console.print(f"[red]{r['sessions']} sessions: {count} x {error}[/]")
        engine = rows[-1].get("engine")
        if engine:
            console.print("engine-side (from the request rows, last level, seconds): " + ", ".join(
                f"{k} {v:.2f}" for k, v in engine.items()))
    if streams:
        console.print(
            f"parked streams ({backend}): {streams['first_frame']} of {streams['streams']} delivered a first frame, "
            f"{streams['interaction_frame']} their interaction frame, in {streams['seconds_to_all_frames']:.1f} s; "
            f"web RSS {streams['rss_before_mib']:.0f} -> {streams['rss_after_mib']:.0f} MiB "
            f"({streams['kib_per_stream']:.0f} KiB per stream); /health while they opened p50 "
            f"{streams['health_ms_opening_p50']:.0f} ms, max {streams['health_ms_opening_max']:.0f} ms; once all were "
            f"open p50 {streams['health_ms_open_p50']:.0f} ms, max {streams['health_ms_open_max']:.0f} ms")


if __name__ == "__main__":
    main()
