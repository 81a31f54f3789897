"""Ours against the original (`mashpy` 0.4.2, FastAPI + DBOS), side by side, interleaved.

Installs `mashpy==0.4.2` with what its server needs (python-dotenv, dbos<3, anthropic<1)
into a cached virtualenv (`--cache`, default ~/.cache/mash-bench/mashpy-0.4.2: created
once, reused), writes the same one-agent app for it in that package's own terms (one
agent, AnthropicProvider, one `lookup` tool offered, no runtime tools, no history), and
serves the two hosts as a user runs them, each with an API key, on loopback only:

- the original: `mash host serve --host-app vs_original_app:build_host --api-key K` from
  the cached venv (one uvicorn process; DBOS runs its requests in it), MASH_DATABASE_URL
  a fresh PostgreSQL database (it runs on nothing else);
- ours: `mash host serve --host-app bench.vs_original:build_ours_host --api-key K` from
  this checkout (daphne + a django-q2 worker cluster), on a fresh PostgreSQL database
  (`--redis` adds Redis), and with `--sqlite` also on the SQLite default.

Both call the real Anthropic SDK (the original pins an older one: anthropic<1), pointed by
ANTHROPIC_BASE_URL at one loopback fake, tests/fakes/slow_anthropic.py, which answers
every call after `--delay` seconds. One load generator drives both: bench/http_load.py's
client (S closed-loop sessions, each POSTs a request and follows its SSE stream to the
terminal event; both hosts speak the same wire contract: POST /api/v1/agent/{id}/request,
GET .../request/{rid}/events, `event: request.completed` / `request.error`).

Runs are interleaved, original, ours, original, ours..., per level within each round, each
on a host started afresh on a fresh database and warmed up first (`--warmup`). It prints
per run and as medians over the rounds: throughput (req/s: streams that delivered their
terminal event, per second; ended/s: every stream that ended, per second, as the
original's can end without it), p50/p95 POST -> terminal, streams without a terminal
event, model calls per request (from the fake), CPU per request by process (web, worker,
PostgreSQL: this run's database's backends and the server's own processes, Redis, the
client, the fake, and "other": the machine's busy CPU outside them, which shows a run that
shared the machine; the original is one process, counted as web), and the
ratios ours/original (the median of each round's ratio: runs of one round are minutes
apart, rounds further), then the issue's targets.

    python bench/vs_original.py --levels 1,8 --requests 100 --rounds 1     # a quick check
    python bench/vs_original.py                                            # 1, 8, 32 sessions, 3 rounds
    python bench/vs_original.py --sqlite --delay 0.05 --rounds 2
    python bench/vs_original.py --no-original                              # ours alone, same shape
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.http_load import (CLK_TCK, KeyedHost, _proc_table, cpu_by_role, drop_database,  # noqa: E402
                             free_port, fresh_backends, raise_fd_limit, run_level)
from bench.in_flight import children, cmdline, tree  # noqa: E402

ORIGINAL_VERSION = "0.4.2"
ORIGINAL_REQUIREMENTS = [f"mashpy=={ORIGINAL_VERSION}", "python-dotenv", "dbos<3", "anthropic<1"]
DEFAULT_CACHE = Path("~/.cache/mash-bench").expanduser() / f"mashpy-{ORIGINAL_VERSION}"
OURS_APP = "bench.vs_original:build_ours_host"
ORIGINAL_APP_MODULE = "vs_original_app"
REDIS_DB = 12
# What a request can raise on the client side and still be counted (as one without a
# terminal event) rather than end the run: HTTP errors, and a POST answered with
# something other than {"data": {"request_id": ...}}.
CATCH = (httpx.HTTPError, KeyError, TypeError, ValueError)

# The one-agent app, for the original, in its own SDK's terms (mash.* of mashpy 0.4.2):
# the same agent as build_ours_host below.
ORIGINAL_APP = '''"""The vs_original bench's app for mashpy 0.4.2 (written by bench/vs_original.py)."""

from mash.core.config import AgentConfig
from mash.core.llm import AnthropicProvider
from mash.runtime import AgentSpec, HostBuilder
from mash.skills import SkillRegistry
from mash.tools.base import FunctionTool, ToolResult
from mash.tools.registry import ToolRegistry


async def _lookup(args):
    return ToolResult.success(f"value of {args.get('key')}")


class BenchAgent(AgentSpec):
    def get_agent_id(self):
        return "bench"

    def build_tools(self):
        tools = ToolRegistry()
        tools.register(FunctionTool(
            name="lookup", description="Return a canned value.",
            parameters={"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]},
            _executor=_lookup))
        return tools

    def build_skills(self):
        return SkillRegistry()

    def build_llm(self):
        return AnthropicProvider(app_id="bench", model="claude-fake")

    def build_agent_config(self):
        return AgentConfig(app_id="bench", system_prompt="bench", conversation_history_turns=0)

    def enable_runtime_tools(self):
        return False


def build_host():
    return HostBuilder().primary(BenchAgent()).build()
'''


def build_ours_host():
    """Ours: the same one-agent app (served by `mash host serve --host-app bench.vs_original:build_ours_host`)."""
    from mash_core.config import AgentConfig
    from mash_core.llm import AnthropicProvider
    from mash_core.tools import FunctionTool, ToolRegistry
    from mash_runtime import AgentSpec, HostBuilder

    def lookup(key: str) -> str:
        """Return a canned value."""
        return f"value of {key}"

    class BenchAgent(AgentSpec):
        def get_agent_id(self) -> str:
            return "bench"

        def build_tools(self) -> ToolRegistry:
            return ToolRegistry([FunctionTool(lookup)])

        def build_llm(self):
            return AnthropicProvider(app_id="bench", model="claude-fake")

        def build_agent_config(self) -> AgentConfig:
            return AgentConfig(app_id="bench", system_prompt="bench", conversation_history_turns=0)

        def enable_runtime_tools(self) -> bool:
            return False

    return HostBuilder().primary(BenchAgent()).build()


class Blocked(RuntimeError):
    """The original cannot be installed or served here; the message says why."""


def original_venv(cache: Path, reinstall: bool = False) -> Path:
    """The cached virtualenv with the original installed (created once, reused); its bin/."""
    marker = cache / ".vs_original-installed"
    wanted = "\n".join(ORIGINAL_REQUIREMENTS)
    if reinstall and cache.exists():
        shutil.rmtree(cache)
    if not (marker.exists() and marker.read_text() == wanted and (cache / "bin" / "mash").exists()):
        print(f"installing {' '.join(ORIGINAL_REQUIREMENTS)} into {cache} (once)", file=sys.stderr)
        cache.parent.mkdir(parents=True, exist_ok=True)
        if not (cache / "bin" / "python").exists():
            done = subprocess.run([sys.executable, "-m", "venv", str(cache)], capture_output=True, text=True, check=False)
            if done.returncode:
                raise Blocked(f"python -m venv {cache} failed: {done.stderr.strip()[-1500:]}")
        done = subprocess.run([str(cache / "bin" / "python"), "-m", "pip", "install", "-q", *ORIGINAL_REQUIREMENTS],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if not line.startswith("WARNING: Location")]
            raise Blocked(f"pip install {' '.join(ORIGINAL_REQUIREMENTS)} failed: " + "\n".join(errors)[-1500:])
        marker.write_text(wanted)
    app_dir = cache / "app"
    app_dir.mkdir(exist_ok=True)
    app_file = app_dir / f"{ORIGINAL_APP_MODULE}.py"
    if not app_file.exists() or app_file.read_text() != ORIGINAL_APP:
        app_file.write_text(ORIGINAL_APP)
    return cache / "bin"


def clean_env(fake_env: dict[str, str]) -> dict[str, str]:
    """This environment less any Mash or database setting of the caller's, plus the fake's."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MASH_", "DBOS_", "ANTHROPIC_")) and k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(fake_env)
    return env


class Served(KeyedHost):
    """One host as a user runs it: `mash host serve` with an API key, on a fresh database."""

    label = ""
    uses_postgres = True
    uses_redis = False

    def __init__(self, scratch: Path, run: int):
        self.port = free_port()
        self.key = "bench-" + secrets.token_hex(8)
        self.dir = scratch / f"{run:03d}-{self.label}"
        self.dir.mkdir(parents=True)
        self.log = open(self.dir / "serve.log", "wb")
        self.proc: subprocess.Popen | None = None
        self.db: str | None = None
        self.pids: dict[int, str] = {}  # the served process tree once ready: pid -> command line

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def roots(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def start(self, env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(self.argv(), cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=raise_fd_limit)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label}: `mash host serve` exited ({self.proc.returncode}): "
                                   + self.tail())
            try:
                if self.ready():
                    self.pids = {pid: cmdline(pid) for pid in tree(self.proc.pid)}
                    return
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.label}: not ready after 180 s: " + self.tail())

    def tail(self) -> str:
        self.log.flush()
        return (self.dir / "serve.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.ask_to_stop()
        # Children started in sessions of their own outlive a killed parent: end each by id (if
        # that id is still the process it was, not a new one that reused it).
        for pid, command in self.pids.items():
            if cmdline(pid) != command:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()
        drop_database(self.db)


class Original(Served):
    label = "original"

    def __init__(self, scratch: Path, run: int, bin_dir: Path, fake_env: dict[str, str]):
        super().__init__(scratch, run)
        self.bin = bin_dir
        self.db = f"mash_vs_original_{os.getpid()}_{run}"
        subprocess.run(["psql", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c",
                        f"CREATE DATABASE {self.db}"], check=True)
        self.env = clean_env(fake_env)
        # Its docs: MASH_DATABASE_URL configures the runtime, memory and API tables (with only
        # --database-url its memory store would fall back to SQLite under MASH_DATA_DIR).
        self.env.update({"MASH_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{self.db}",
                         "MASH_DATA_DIR": str(self.dir / "data"), "PYTHONPATH": str(bin_dir.parent / "app")})

    def argv(self) -> list[str]:
        return [str(self.bin / "mash"), "host", "serve", "--host-app", f"{ORIGINAL_APP_MODULE}:build_host",
                "--host", "127.0.0.1", "--port", str(self.port), "--api-key", self.key]

    def ready(self) -> bool:
        return httpx.get(f"{self.base}/api/v1/health", headers=self.headers, timeout=5).status_code == 200

    def roots(self) -> dict[str, list[int]]:
        return {"web": [self.proc.pid], "worker": []}  # one process: DBOS runs the requests in it


class Ours(Served):
    def __init__(self, scratch: Path, run: int, fake_env: dict[str, str], backend: str, redis: bool, workers: int):
        self.label = "ours-" + backend + ("+redis" if redis else "")
        self.uses_postgres, self.uses_redis = backend == "postgres", redis
        super().__init__(scratch, run)
        self.workers = workers
        self.env = clean_env(fake_env)
        self.env.update({"MASH_DATA_DIR": str(self.dir / "data"), "PYTHONPATH": str(REPO),
                         "MASH_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "mash_project.settings"})
        wanted = SimpleNamespace(postgres=backend == "postgres", redis=redis)
        self.db = fresh_backends(self.env, wanted, f"mash_vs_ours_{run}", redis_db=REDIS_DB)

    def argv(self) -> list[str]:
        mash = Path(sys.executable).with_name("mash")
        command = [str(mash)] if mash.exists() else [sys.executable, "-m", "mash_project.cli"]
        return [*command, "host", "serve", "--host-app", OURS_APP, "--port", str(self.port), "--api-key", self.key,
                "--workers", str(self.workers)]

    def ready(self) -> bool:
        health = httpx.get(f"{self.base}/api/v1/health", headers=self.headers, timeout=5)
        return health.status_code == 200 and health.json()["data"]["workers"]["live"] >= self.workers

    def roots(self) -> dict[str, list[int]]:
        # Its children: the web process (daphne, run as `python -m mash_api.management.commands.serve`)
        # and the worker cluster (`mash_project.cli qcluster`); the supervisor itself idles.
        kids = children(self.proc.pid)
        return {"web": [c for c in kids if "qcluster" not in cmdline(c)],
                "worker": [c for c in kids if "qcluster" in cmdline(c)]}


def postgres_cpu(db: str | None) -> float:
    """CPU seconds used so far by this run's PostgreSQL: the backends of database `db` and the
    server's own processes (postmaster, checkpointer, WAL writer...), not the backends of other
    databases (another engineer's test suite may be using the same server)."""
    total = 0.0
    for pid, (_, name, cpu) in _proc_table().items():
        if name != "postgres":
            continue
        title = cmdline(pid).strip()
        if title.startswith("postgres:"):  # a child of the postmaster, titled "postgres: 15/main: ..."
            words = title.split(": ", 2)[-1].split()
            if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):  # user db host(port) state
                if words[1] != db:
                    continue
            elif words[:2] == ["autovacuum", "worker"] and len(words) > 2 and words[2] != db:
                continue
        total += cpu
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O) since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


def snapshot(roots: dict[str, list[int]], db: str | None) -> dict[str, float]:
    cpu = cpu_by_role(roots)
    cpu["postgres"] = postgres_cpu(db)
    cpu["machine"] = machine_busy()
    return cpu


def measure(host: Served, level: int, requests: int, warmup: int, fake, progress=None) -> dict:
    """Warm `host` up, then one level: the load row with CPU per request by role and model calls."""
    if warmup:
        asyncio.run(run_level([host.base], level, max(level, warmup), headers=host.headers, catch=CATCH))
    roots = {**host.roots(), "fake": [fake.proc.pid]}
    db = host.db if host.uses_postgres else None
    calls_before = fake.stats()["calls"]
    before = snapshot(roots, db)
    row = asyncio.run(run_level([host.base], level, requests, progress, headers=host.headers, catch=CATCH))
    after = snapshot(roots, db)
    done = max(1, row["requests"] - row["no_terminal"])
    cpu = {k: (after[k] - before[k]) * 1000 / done for k in after}
    machine = cpu.pop("machine")
    # Busy CPU on this machine that none of the processes above used: another engineer's tests,
    # other databases' backends, processes that exited during the run.
    cpu["other"] = machine - sum(cpu.values())
    if not host.uses_postgres:
        cpu["postgres"] = float("nan")
    if not host.uses_redis:
        cpu["redis"] = float("nan")
    row["cpu_ms_per_request"] = cpu
    row["server_cpu_ms"] = sum(cpu[k] for k in ("web", "worker", "postgres", "redis") if not math.isnan(cpu[k]))
    row["calls_per_request"] = (fake.stats()["calls"] - calls_before) / max(1, row["requests"])
    # Every stream that ended, with a terminal event or not, per second: the original's streams
    # can end without one (its runs still complete), and req/s counts only those with one.
    ok = row["requests"] - row["no_terminal"]
    row["ended_per_s"] = row["req_per_s"] * row["requests"] / ok if ok else float("nan")
    row["host"] = host.label
    return row


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,8,32",
                        help="concurrent closed-loop sessions, comma-separated levels (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=200,
                        help="requests per level in each run, split evenly over its sessions (default 200)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds: each runs every level on every host in turn, original first (default 3)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="requests a fresh host answers before each measured run, at least one per "
                             "session (default 10; 0: none)")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds the Anthropic fake takes to answer each model call (default 0)")
    parser.add_argument("--tool-first", action="store_true",
                        help="the fake calls the `lookup` tool first, then answers: two model calls and a tool "
                             "call per request (default: one model call that answers)")
    parser.add_argument("--sqlite", action="store_true",
                        help="also run ours on the SQLite default (no PostgreSQL, no Redis; the original has "
                             "no such mode)")
    parser.add_argument("--redis", action="store_true",
                        help="ours on PostgreSQL with Redis (broker and channel layer, 127.0.0.1:6379/12); "
                             "default PostgreSQL alone, as the original")
    parser.add_argument("--workers", type=int, default=2,
                        help="ours' worker processes (mash host serve --workers; default 2, its default)")
    parser.add_argument("--no-original", action="store_true", help="measure ours alone (same shape, no ratios)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help=f"the original's cached virtualenv (default {DEFAULT_CACHE}; made once)")
    parser.add_argument("--reinstall", action="store_true", help="remove and rebuild the cached virtualenv first")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory (logs, SQLite files)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    raise_fd_limit()
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from tests.fakes.slow_anthropic import run_slow_anthropic

    console = Console(width=max(Console().width, 180), stderr=args.json)
    levels = [int(x) for x in args.levels.split(",")]
    blocked = None
    bin_dir = None
    if not args.no_original:
        try:
            with console.status(f"the original's virtualenv ({args.cache})"):
                bin_dir = original_venv(args.cache, args.reinstall)
        except Blocked as exc:
            blocked = str(exc)
            console.print(f"[red]original blocked: {blocked}[/]\nmeasuring ours alone")
    scratch = Path(tempfile.mkdtemp(prefix="mash-vs-original-"))
    kinds = (["original"] if bin_dir else []) + ["ours-postgres"] + (["ours-sqlite"] if args.sqlite else [])
    rows: list[dict] = []
    run = 0
    started = time.time()
    load_before = os.getloadavg()
    try:
        with run_slow_anthropic(args.delay, tool_first=args.tool_first, log_path=scratch / "fake.log") as fake:
            with Progress(console=console, transient=True) as progress:
                for round_number in range(1, args.rounds + 1):
                    for level in levels:
                        for kind in list(kinds):
                            run += 1
                            if kind == "original":
                                host: Served = Original(scratch, run, bin_dir, fake.env)
                            else:
                                backend = kind.split("-", 1)[1]
                                host = Ours(scratch, run, fake.env, backend, args.redis and backend == "postgres",
                                            args.workers)
                            task = progress.add_task(f"round {round_number}/{args.rounds}: {host.label}, "
                                                     f"{level} sessions", total=max(1, args.requests // level) * level)
                            try:
                                host.start(host.env, host.dir)
                                row = measure(host, level, args.requests, args.warmup, fake,
                                              lambda task=task: progress.advance(task))
                            except RuntimeError as exc:
                                if kind != "original":
                                    raise
                                blocked = f"could not be served: {exc}"
                                console.print(f"[red]original {blocked}[/]\nmeasuring ours alone")
                                kinds.remove("original")
                                continue
                            finally:
                                host.stop()
                                progress.remove_task(task)
                            row["round"] = round_number
                            rows.append(row)
                            if not args.json:
                                console.print(f"round {round_number}, {level} sessions, {host.label}: "
                                              f"{row['req_per_s']:.1f} req/s ({row['ended_per_s']:.1f} "
                                              f"streams ended/s), p50 {row['p50_total']:.1f} ms, "
                                              f"{row['no_terminal']} without terminal, server CPU "
                                              f"{row['server_cpu_ms']:.1f} ms/request, other "
                                              f"{row['cpu_ms_per_request']['other']:.1f}")
    finally:
        if args.keep:
            console.print(f"runs' directories (logs, data) kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    minutes = (time.time() - started) / 60
    hosts = [k for k in ["original", "ours-postgres" + ("+redis" if args.redis else ""), "ours-sqlite"]
             if any(r["host"] == k for r in rows)]
    summary = {}
    for host_label in hosts:
        for level in levels:
            mine = [r for r in rows if r["host"] == host_label and r["sessions"] == level]
            if not mine:
                continue
            roles = list(mine[0]["cpu_ms_per_request"])
            summary[(host_label, level)] = {
                "runs": len(mine), "requests": sum(r["requests"] for r in mine),
                "req_per_s": median([r["req_per_s"] for r in mine]),
                "ended_per_s": median([r["ended_per_s"] for r in mine]), "p50_total": median([r["p50_total"] for r in mine]),
                "p95_total": median([r["p95_total"] for r in mine]),
                "no_terminal": sum(r["no_terminal"] for r in mine),
                "calls_per_request": median([r["calls_per_request"] for r in mine]),
                "server_cpu_ms": median([r["server_cpu_ms"] for r in mine]),
                "cpu_ms_per_request": {k: median([r["cpu_ms_per_request"][k] for r in mine]) for k in roles},
                "errors": {e: sum(r["errors"].get(e, 0) for r in mine) for r in mine for e in r["errors"]},
            }
    ratios = {}
    for host_label in hosts[1:] if "original" in hosts else []:
        for level in levels:
            pairs = [(a, b) for a in rows for b in rows if a["host"] == "original" and b["host"] == host_label
                     and a["sessions"] == b["sessions"] == level and a["round"] == b["round"]]
            if not pairs:
                continue

            def each(key, pairs=pairs):
                return [b[key] / a[key] if a[key] else float("nan") for a, b in pairs]

            ratios[(host_label, level)] = {k: {"median": median(each(k)), "min": min(each(k)), "max": max(each(k))}
                                           for k in ("req_per_s", "ended_per_s", "p50_total", "p95_total", "server_cpu_ms")}
    targets = {}
    if ratios:
        ours_pg = hosts[1]
        at8, at1 = ratios.get((ours_pg, 8)), ratios.get((ours_pg, 1))
        targets = {
            "throughput_8_sessions_ratio": at8["req_per_s"]["median"] if at8 else None,
            "throughput_8_sessions_ratio_every_stream": at8["ended_per_s"]["median"] if at8 else None,
            "throughput_8_sessions_met": bool(at8 and at8["req_per_s"]["median"] >= 5),
            "throughput_8_sessions_met_every_stream": bool(at8 and at8["ended_per_s"]["median"] >= 5),
            "p50_1_session_ratio": at1["p50_total"]["median"] if at1 else None,
            "p50_1_session_met": bool(at1 and at1["p50_total"]["median"] <= 0.25),
            "ours_no_terminal": sum(r["no_terminal"] for r in rows if r["host"] != "original"),
            "original_no_terminal": sum(r["no_terminal"] for r in rows if r["host"] == "original"),
        }
    config = {"levels": levels, "requests": args.requests, "rounds": args.rounds, "warmup": args.warmup,
              "delay": args.delay, "tool_first": args.tool_first, "workers": args.workers, "redis": args.redis,
              "original": " ".join(ORIGINAL_REQUIREMENTS) if bin_dir else None, "blocked": blocked,
              "minutes": minutes, "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
    if args.json:
        print(json.dumps({"config": config, "runs": rows,
                          "summary": [{"host": h, "sessions": s, **v} for (h, s), v in summary.items()],
                          "ratios": [{"host": h, "sessions": s, **v} for (h, s), v in ratios.items()],
                          "targets": targets}, indent=2))
        return
    table = Table(title=f"Medians over {args.rounds} round(s), {args.requests} requests per run, model "
                        f"{args.delay:g} s{', tool first' if args.tool_first else ''}; CPU = ms per completed "
                        "request (2 cores = 2,000 ms of CPU per second); server = web + worker + postgres + redis; "
                        "other = the machine's busy CPU outside the processes shown")
    table.add_column("host", no_wrap=True)
    for column in ("sessions", "requests", "req/s", "ended/s", "p50 ms", "p95 ms", "no terminal", "calls/req",
                   "web", "worker", "postgres", "redis", "server", "client", "fake", "other"):
        table.add_column(column, justify="right")
    for (host_label, level), s in summary.items():
        cpu = s["cpu_ms_per_request"]
        table.add_row(host_label, str(level), str(s["requests"]), fmt(s["req_per_s"]), fmt(s["ended_per_s"]),
                      fmt(s["p50_total"]),
                      fmt(s["p95_total"]), str(s["no_terminal"]), fmt(s["calls_per_request"], 2),
                      *(fmt(cpu[k]) for k in ("web", "worker", "postgres", "redis")), fmt(s["server_cpu_ms"]),
                      *(fmt(cpu[k]) for k in ("client", "fake", "other")))
    console.print(table)
    for (host_label, level), s in summary.items():
        for error, count in s["errors"].items():
            console.print(f"[red]{host_label}, {level} sessions: {count} x {error}[/]")
    if ratios:
        ratio_table = Table(title="ours / original: median of each round's ratio (min-max over rounds)")
        ratio_table.add_column("host", no_wrap=True)
        for column in ("sessions", "req/s", "ended/s", "p50", "p95", "server CPU per request"):
            ratio_table.add_column(column, justify="right")
        for (host_label, level), r in ratios.items():
            ratio_table.add_row(host_label, str(level), *(
                f"{r[k]['median']:.2f} ({r[k]['min']:.2f}-{r[k]['max']:.2f})"
                for k in ("req_per_s", "ended_per_s", "p50_total", "p95_total", "server_cpu_ms")))
        console.print(ratio_table)

        def verdict(met: bool) -> str:
            return "[green]met[/]" if met else "[red]not met[/]"

        if targets["throughput_8_sessions_ratio"] is not None:
            console.print(f"target: throughput at 8 sessions >= 5x the original's: "
                          f"{targets['throughput_8_sessions_ratio']:.2f}x counting streams with a terminal event "
                          f"({verdict(targets['throughput_8_sessions_met'])}), "
                          f"{targets['throughput_8_sessions_ratio_every_stream']:.2f}x counting every stream that "
                          f"ended ({verdict(targets['throughput_8_sessions_met_every_stream'])})")
        if targets["p50_1_session_ratio"] is not None:
            console.print(f"target: p50 at 1 session <= 1/4 of the original's: "
                          f"{targets['p50_1_session_ratio']:.2f}x, {verdict(targets['p50_1_session_met'])}")
        console.print(f"target: 0 streams without a terminal event: ours {targets['ours_no_terminal']} "
                      f"({verdict(targets['ours_no_terminal'] == 0)}), the original {targets['original_no_terminal']}")
    if blocked:
        console.print(f"[red]the original was not measured: {blocked}[/]")
    console.print(f"{run} runs in {minutes:.1f} min; load average (1, 5, 15 min) before "
                  f"{', '.join(f'{x:.2f}' for x in config['loadavg_before'])}, after "
                  f"{', '.join(f'{x:.2f}' for x in config['loadavg_after'])}")


if __name__ == "__main__":
    main()
