"""HTTP load: POST a request, follow its SSE stream to the terminal event, repeat.

Starts its own web process(es) (daphne) and worker cluster (qcluster) on a fresh
database, then drives the wire contract with S concurrent sessions (closed loop:
each session posts, streams to the end, posts again). Prints per level: p50/p95
POST->terminal, accept latency (POST round trip), time to first event, completed
requests/s, and streams that ended without a terminal event. Then opens idle SSE
streams against one web process and reports how many it holds and its RSS.

    python bench/http_load.py                             # SQLite, ORM broker, in-memory layer
    python bench/http_load.py --postgres --redis          # PostgreSQL + Redis
    python bench/http_load.py --levels 64 --requests 5000 --postgres --redis
    python bench/http_load.py --levels none --idle 1000 --postgres --redis
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
HOST = "bench.bench_host:build_host"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


CLK_TCK = os.sysconf("SC_CLK_TCK")

# One TLS context for every client: httpx builds (and loads the CA bundle into) a new one
# per client otherwise, 33 ms of CPU each here, so 256 sessions starting together spent
# 8 s of the machine's CPU on the load generator's own setup, for plain-HTTP requests.
TLS = ssl.create_default_context()


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds used so far) for every live process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def cpu_by_role(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each role: a role's root processes and all their descendants,
    PostgreSQL's and Redis's server processes, and this client."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals = {}
    for role, pids in roots.items():
        stack, seen = list(pids), 0.0
        while stack:
            pid = stack.pop()
            if pid in table:
                seen += table[pid][2]
            stack.extend(children.get(pid, []))
        totals[role] = seen
    totals["postgres"] = sum(cpu for _, name, cpu in table.values() if name == "postgres")
    totals["redis"] = sum(cpu for _, name, cpu in table.values() if name == "redis-server")
    own = os.times()
    totals["client"] = own.user + own.system
    return totals


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def only_the_tree(scratch: str) -> str:
    """A folder whose sitecustomize drops this checkout's editable-install finder, for
    processes serving another tree: without it, a module the other tree lacks (an older
    revision has no mash_runtime/admin.py) was found in this checkout instead, mixing two
    revisions' code in one process (Django's admin autodiscovery imported it)."""
    folder = Path(scratch) / "only-the-tree"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in getattr(f, '__module__', '')\n"
        "                    and '__editable__' not in getattr(type(f), '__module__', '')]\n")
    return str(folder)


class Servers:
    def __init__(self, args):
        self.args = args
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ)
        self.data_dir = tempfile.mkdtemp(prefix="mash-http-bench-")
        self.tree = Path(getattr(args, "tree", None) or REPO)  # the checkout whose code serves
        path = [str(self.tree)]
        if self.tree.resolve() != REPO.resolve():
            path.append(only_the_tree(self.data_dir))
        self.env.update({"MASH_DATA_DIR": self.data_dir, "MASH_HOST_APP": HOST, "PYTHONPATH": os.pathsep.join(path),
                         "MASH_WORKERS": str(args.workers), "MASH_QUEUE_POLL": str(args.poll),
                         "MASH_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "mash_project.settings"})
        self.db = fresh_backends(self.env, args, "mash_http_bench", redis_db=14)
        self.ports = [free_port() for _ in range(args.web)]

    def start(self) -> None:
        subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=self.tree, env=self.env, check=True)
        for port in self.ports:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "daphne", "-e", f"tcp:port={port}:interface=127.0.0.1:backlog=1024",
                 "mash_project.asgi:application"],
                cwd=self.tree, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=raise_fd_limit))
        self.procs.append(subprocess.Popen(
            [sys.executable, "manage.py", "qcluster"], cwd=self.tree, env={**self.env, "MASH_PROCESS_ROLE": "worker"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.time() + 60
        for port in self.ports:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise SystemExit("web process did not come up")
                time.sleep(0.2)
        time.sleep(1.5)  # let the cluster's workers spawn

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        drop_database(self.db)


def fresh_backends(env: dict[str, str], args, prefix: str, redis_db: int) -> str | None:
    """Point `env` at a fresh PostgreSQL database (`args.postgres`) and an empty Redis
    database (`args.redis`); returns the database's name, for `drop_database`."""
    db = None
    if args.postgres:
        db = f"{prefix}_{os.getpid()}"
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
                        f"CREATE DATABASE {db}"], check=True)
        env["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"
    if args.redis:
        env["MASH_REDIS_URL"] = f"redis://127.0.0.1:6379/{redis_db}"
        subprocess.run(["redis-cli", "-n", str(redis_db), "flushdb"], check=False, capture_output=True)
    return db


def drop_database(db: str | None) -> None:
    if db:
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
                        f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], check=False)


async def one_request(client: httpx.AsyncClient, base: str, session: str, agent: str = "bench") -> dict:
    """POST one request and follow its SSE stream to the terminal event."""
    started = time.perf_counter()
    response = await client.post(f"{base}/api/v1/agent/{agent}/request", json={"message": "go", "session_id": session})
    accepted = time.perf_counter()
    rid = response.json()["data"]["request_id"]
    first = None
    terminal = None
    async with client.stream("GET", f"{base}/api/v1/agent/{agent}/request/{rid}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("event: "):
                if first is None:
                    first = time.perf_counter()
                if line[7:] in ("request.completed", "request.error"):
                    terminal = time.perf_counter()
    return {"accept_ms": (accepted - started) * 1000, "first_ms": ((first or accepted) - started) * 1000,
            "total_ms": ((terminal or time.perf_counter()) - started) * 1000, "terminal": terminal is not None}


async def run_level(bases: list[str], sessions: int, total: int, progress=None, headers=None,
                    catch: tuple[type[BaseException], ...] = (httpx.HTTPError,)) -> dict:
    """`sessions` closed-loop sessions sharing `total` requests; `headers` go on every call
    (an API key). A request that raises one of `catch` counts as one without a terminal
    event (with its error) instead of ending the run."""
    per_session = max(1, total // sessions)
    results: list[dict] = []

    async def session_loop(index: int) -> None:
        # A client per session, as each user has one: a single pool shared by 64 sessions
        # spent more CPU looking for a free connection (httpcore scans them all) than the
        # server spent on the request, and the benchmark measured itself.
        limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
        async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits, headers=headers, verify=TLS) as client:
            for _ in range(per_session):
                # Alternate web processes when there are several: submit through one, stream through the same.
                base = bases[index % len(bases)]
                try:
                    results.append(await one_request(client, base, f"load-{sessions}-{index}"))
                except catch as exc:
                    results.append({"accept_ms": float("nan"), "first_ms": float("nan"), "total_ms": float("nan"),
                                    "terminal": False, "error": f"{type(exc).__name__}: {exc}"})
                if progress:
                    progress()

    started = time.perf_counter()
    await asyncio.gather(*(session_loop(i) for i in range(sessions)))
    wall = time.perf_counter() - started
    ok = [r for r in results if r["terminal"]]
    errors: dict[str, int] = {}
    for r in results:
        if "error" in r:
            errors[r["error"][:120]] = errors.get(r["error"][:120], 0) + 1
    return {
        "sessions": sessions, "requests": len(results), "no_terminal": len(results) - len(ok), "errors": errors,
        "p50_total": percentile([r["total_ms"] for r in ok], 0.5), "p95_total": percentile([r["total_ms"] for r in ok], 0.95),
        "p50_accept": percentile([r["accept_ms"] for r in ok], 0.5),
        "p50_first": percentile([r["first_ms"] for r in ok], 0.5), "req_per_s": len(ok) / wall,
    }


async def idle_streams(base: str, count: int, daphne_pid: int) -> dict:
    async with httpx.AsyncClient(timeout=30) as client:
        rid = (await client.post(f"{base}/api/v1/agent/bench-park/request", json={"message": "park"})).json()["data"]["request_id"]
        for _ in range(200):
            status = (await client.get(f"{base}/api/v1/agent/bench-park/request/{rid}/status")).json()["data"]["status"]
            if status == "waiting_input":
                break
            await asyncio.sleep(0.1)
    rss_before = rss_mib(daphne_pid)
    opened = 0
    ready = asyncio.Event()
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)

    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, read=None), limits=limits) as client:
        async def hold_one() -> None:
            nonlocal opened
            try:
                async with client.stream("GET", f"{base}/api/v1/agent/bench-park/request/{rid}/events") as stream:
                    async for line in stream.aiter_lines():
                        if line.startswith("event: request.interaction.create"):
                            opened += 1
                            if opened == count:
                                ready.set()
                            await stop.wait()
                            return
            except httpx.HTTPError:
                return

        tasks = [asyncio.create_task(hold_one()) for _ in range(count)]
        try:
            await asyncio.wait_for(ready.wait(), timeout=180)
        except asyncio.TimeoutError:
            pass
        await asyncio.sleep(10)  # past the readers' first polls: measure the steady idle state
        held, rss_after = opened, rss_mib(daphne_pid)
        probe_started = time.perf_counter()
        async with httpx.AsyncClient(timeout=30) as probe:
            await probe.get(f"{base}/api/v1/health")
        probe_ms = (time.perf_counter() - probe_started) * 1000
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"asked": count, "held": held, "rss_before_mib": rss_before, "rss_after_mib": rss_after,
            "health_ms_while_held": probe_ms}


def add_backend_flags(parser: argparse.ArgumentParser, redis_db: int) -> None:
    """The flags every bench that starts its own servers takes: which database and broker, how
    many worker processes, the ORM broker's poll."""
    parser.add_argument("--postgres", action="store_true", help="fresh PostgreSQL database on 127.0.0.1:5432")
    parser.add_argument("--redis", action="store_true",
                        help=f"Redis broker + channel layer on 127.0.0.1:6379/{redis_db}")
    parser.add_argument("--workers", type=int, default=2, help="qcluster worker processes (default 2)")
    parser.add_argument("--poll", type=float, default=0.02, help="ORM broker poll interval, seconds (default 0.02)")


class KeyedHost:
    """A served host on loopback `port`, called with the API key `key`."""

    port: int
    key: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def ask_to_stop(self, wait: float = 60) -> bool:
        """SIGTERM to `self.proc` (`mash host serve`: it drains its workers), waiting up to
        `wait` seconds; whether it has exited."""
        proc = getattr(self, "proc", None)
        if proc is None or proc.poll() is not None:
            return True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            return False
        return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_flags(parser, redis_db=14)
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent sessions per level, or 'none' (default 1,8,32,64)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (default 200)")
    parser.add_argument("--web", type=int, default=1, help="daphne processes (default 1)")
    parser.add_argument("--idle", type=int, default=0, help="idle SSE streams to open on one web process (default 0: skip)")
    parser.add_argument("--json", action="store_true", help="print results as JSON instead of tables")
    parser.add_argument("--tree", help="serve the code of another checkout (a git worktree) with this load "
                                       "generator (default: this checkout); bench/compare.py uses it")
    args = parser.parse_args()
    raise_fd_limit()
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    console = Console()
    servers = Servers(args)
    rows, idle = [], None
    try:
        with console.status("starting web and worker processes"):
            servers.start()
        bases = [f"http://127.0.0.1:{p}" for p in servers.ports]
        levels = [] if args.levels == "none" else [int(x) for x in args.levels.split(",")]
        with Progress(console=console, transient=True) as progress:
            for level in levels:
                task = progress.add_task(f"{level} session(s)", total=max(1, args.requests // level) * level)
                roots = {"web": [p.pid for p in servers.procs[:-1]], "worker": [servers.procs[-1].pid]}
                before = cpu_by_role(roots)
                row = asyncio.run(run_level(bases, level, args.requests, lambda: progress.advance(task)))
                after = cpu_by_role(roots)
                done = max(1, row["requests"] - row["no_terminal"])
                row["cpu_ms_per_request"] = {k: (after[k] - before[k]) * 1000 / done for k in after}
                rows.append(row)
        if args.idle:
            with console.status(f"opening {args.idle} idle streams"):
                idle = asyncio.run(idle_streams(bases[0], args.idle, servers.procs[0].pid))
    finally:
        servers.stop()
    backend = ("PostgreSQL" if args.postgres else "SQLite") + (" + Redis" if args.redis else " + ORM broker")
    if args.json:
        print(json.dumps({"backend": backend, "levels": rows, "idle": idle}, indent=2))
        return
    table = Table(title=f"HTTP: POST -> SSE terminal ({backend}, {args.web} web, {args.workers} workers)")
    for column in ("sessions", "requests", "p50 ms", "p95 ms", "accept p50", "first event p50", "req/s", "no terminal"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r["sessions"]), str(r["requests"]), f"{r['p50_total']:.1f}", f"{r['p95_total']:.1f}",
                      f"{r['p50_accept']:.1f}", f"{r['p50_first']:.1f}", f"{r['req_per_s']:.1f}", str(r["no_terminal"]))
    if rows:
        console.print(table)
        cpu = Table(title="CPU ms per completed request, by process (2 cores = 2000 ms of CPU per second)")
        roles = list(rows[0]["cpu_ms_per_request"])
        for column in ("sessions", *roles, "total"):
            cpu.add_column(column, justify="right")
        for r in rows:
            used = r["cpu_ms_per_request"]
            cpu.add_row(str(r["sessions"]), *(f"{used[k]:.1f}" for k in roles), f"{sum(used.values()):.1f}")
        console.print(cpu)
    if idle:
        console.print(f"idle streams: {idle['held']} of {idle['asked']} held by one daphne process; RSS "
                      f"{idle['rss_before_mib']:.0f} -> {idle['rss_after_mib']:.0f} MiB; /health took "
                      f"{idle['health_ms_while_held']:.0f} ms while they were open")


if __name__ == "__main__":
    main()
