"""Every Mash setting in one table: its Django setting name, default and meaning (django-q2's
`Conf` habit), and the checks that warn at start-up about settings that contradict each other.

`mash_project/settings.py` reads the environment (django-environ) into Django settings;
code reads them only through `conf` (`conf.WORKER_CONCURRENCY`, ...), never with its own
`getattr(settings, ..., default)`, so a default is written once, here. Each read goes to
`django.conf.settings` again: tests and `mash host serve` change settings after import.
mash_core takes none of these: what it needs stays a plain argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core import checks


@dataclass(frozen=True)
class Setting:
    name: str  # the Django setting
    default: Any  # used when the setting is absent; None where the meaning says what stands in
    meaning: str

    @property
    def attr(self) -> str:
        return self.name.removeprefix("MASH_")


SETTINGS = (
    Setting("DATA_DIR", ".mash", "Directory of the SQLite file, the generated secret key and exports "
                                 "(MASH_DATA_DIR)."),
    Setting("REDIS_URL", "", "Redis for the django-q2 broker, the channel layer and token deltas "
                             "(MASH_REDIS_URL); empty: none."),
    Setting("WORKERS", 2, "qcluster worker processes (MASH_WORKERS)."),
    Setting("TASK_TIMEOUT", 300, "Seconds a django-q2 task may run (MASH_TASK_TIMEOUT); a delivery waits "
                                 "for a runner slot at most a quarter of it, 30 s at most."),
    Setting("MASH_HOST_APP", "pilot.spec:build_host", "`module:attr` returning the host."),
    Setting("MASH_API_KEY", "", "The key /api/v1 and /h2a/ require besides stored ApiKeys; empty: none."),
    Setting("MASH_WORKER_CONCURRENCY", 100, "Requests one worker process runs at once (one event loop)."),
    Setting("MASH_WORKER_DB_THREADS", 0, "Threads (one connection each) a worker process does its runs' ORM "
                                         "work on; 0: 4 on PostgreSQL, 1 on SQLite (one writer at a time)."),
    Setting("MASH_WEB_THREADS", 0, "Threads a web process runs sync code on; 0: the pool's size less four "
                                   "(at least 4) on PostgreSQL, 8 on SQLite."),
    Setting("MASH_WORKER_DRAIN_SECONDS", 20.0, "Seconds a stopping worker lets its runs reach a step boundary "
                                               "before handing them back."),
    Setting("MASH_LEASE_SECONDS", 30, "Seconds a worker's claim on a request lasts without renewal "
                                      "(renewed every 0.5 s) before another may take over."),
    Setting("MASH_STREAM_POLL_MAX", None, "Longest wait of a stream between database reads; None: 15 s when "
                                          "doorbells cross processes (Redis, PostgreSQL NOTIFY), else 0.5 s; "
                                          "0.5 s for the API log's tail, which no doorbell rings."),
    Setting("MASH_API_LOG", True, "Log requests under /api/ and /h2a/, and /mcp, to ApiRequestLog."),
    Setting("MASH_API_LOG_FLUSH_SECONDS", 0.1, "Seconds an API log row may wait to be written with others "
                                               "(0: each row before its response)."),
    Setting("MASH_SKILLS_DIR", None, "The only directory published skill locations may point into; None: "
                                     "`<DATA_DIR>/skills`."),
    Setting("MASH_MCP_ENDPOINT", True, "Serve the host's agents as MCP tools at /mcp; off: /mcp is a 404."),
    Setting("MASH_MASHER_EXPORT", False, "Masher appends its digests and eval records as JSON lines under "
                                         "`<DATA_DIR>/masher/`."),
)

_BY_ATTR = {s.attr: s for s in SETTINGS}


class Conf:
    """`conf.<NAME>`: the setting `NAME` (or `MASH_NAME`) of SETTINGS, or its default."""

    def __getattr__(self, attr: str) -> Any:
        setting = _BY_ATTR.get(attr)
        if setting is None:
            raise AttributeError(f"no Mash setting {attr!r} (mash_runtime/conf.py lists them)")
        return getattr(settings, setting.name, setting.default)

    @property
    def is_sqlite(self) -> bool:
        return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")

    @property
    def pool(self) -> dict | None:
        """The web process's psycopg pool options, or None (SQLite, a worker, MASH_DB_POOL=off)."""
        pool = (settings.DATABASES["default"].get("OPTIONS") or {}).get("pool")
        return pool if isinstance(pool, dict) else None

    @property
    def worker_db_threads(self) -> int:
        if self.WORKER_DB_THREADS:
            return int(self.WORKER_DB_THREADS)
        return 1 if self.is_sqlite else 4

    @property
    def web_threads(self) -> int:
        if self.WEB_THREADS:
            return int(self.WEB_THREADS)
        pool = self.pool
        return max(4, int(pool.get("max_size", 20)) - 4) if pool is not None else 8

    @property
    def skills_dir(self):
        from pathlib import Path

        return Path(self.SKILLS_DIR) if self.SKILLS_DIR else Path(self.DATA_DIR) / "skills"


conf = Conf()


def contradictions() -> list[checks.CheckMessage]:
    """Settings that cannot all hold, each a warning naming what to change."""
    found: list[checks.CheckMessage] = []
    pool = conf.pool
    if pool is not None:
        low, high = int(pool.get("min_size", 0)), int(pool.get("max_size", 0))
        if low > high:
            found.append(checks.Warning(
                f"MASH_DB_POOL_MIN ({low}) is above MASH_DB_POOL_MAX ({high}): the pool cannot be opened",
                hint="Lower MASH_DB_POOL_MIN or raise MASH_DB_POOL_MAX.", id="mash.W001"))
        elif conf.web_threads >= high:
            found.append(checks.Warning(
                f"a web process runs {conf.web_threads} threads (MASH_WEB_THREADS) on a pool of {high} connections "
                "(MASH_DB_POOL_MAX): with every thread busy, the API log's writer and the streams' reads wait for "
                "a connection and fail after MASH_DB_POOL_TIMEOUT",
                hint="Keep MASH_WEB_THREADS a few below MASH_DB_POOL_MAX (unset, it is the pool's size less four).",
                id="mash.W002"))
    if conf.is_sqlite and conf.worker_db_threads > 1:
        found.append(checks.Warning(
            f"MASH_WORKER_DB_THREADS is {conf.worker_db_threads} on SQLite, which takes one writer at a time: "
            "the extra threads only queue on its lock, and past MASH_SQLITE_TIMEOUT their writes fail",
            hint="Unset MASH_WORKER_DB_THREADS on SQLite, or use PostgreSQL (DATABASE_URL).", id="mash.W003"))
    lease = float(conf.LEASE_SECONDS)
    if lease <= 2.0:
        found.append(checks.Warning(
            f"MASH_LEASE_SECONDS is {lease:g}: a lease renewed every 0.5 s that lapses after {lease:g} s is taken "
            "over by another worker whenever one renewal is late, and the request runs twice",
            hint="Keep MASH_LEASE_SECONDS well above a second (default 30).", id="mash.W004"))
    return found


def check_settings(app_configs=None, **kwargs) -> list[checks.CheckMessage]:
    """Django system check (registered by MashRuntimeConfig.ready): runs at start-up of every
    management command that checks (serve, qcluster, migrate, check)."""
    return contradictions()
