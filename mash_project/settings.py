"""Mash settings: read from the environment only (django-environ), safe local defaults.

With nothing set: SQLite under MASH_DATA_DIR, the django-q2 ORM broker and the
in-memory channel layer. `DATABASE_URL` (or `MASH_DATABASE_URL`) switches to
PostgreSQL; `MASH_REDIS_URL` switches the queue broker and the channel layer to Redis.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from mash_core.secrets import read_secret


class _SecretFiles(environ.FileAwareMapping):
    """django-environ's `NAME_FILE` lookup (a secret read from a file keeps it out of `ps`
    and environment listings), made strict by mash_core.secrets.read_secret: NAME and NAME_FILE
    together are refused rather than one silently shadowing the other, an unreadable or
    empty file names its variable (an empty MASH_API_KEY would turn auth off), and the
    trailing newline secret files end with is dropped."""

    def __getitem__(self, key):
        return read_secret(key, self.env, error=ImproperlyConfigured) if self.env.get(f"{key}_FILE") else self.env[key]


class _Env(environ.FileAwareEnv):
    ENVIRON = _SecretFiles()


BASE_DIR = Path(__file__).resolve().parent.parent
# Every setting may come from a file: MASH_API_KEY_FILE, DATABASE_URL_FILE, MASH_SECRET_KEY_FILE, ...
env = _Env()

DATA_DIR = Path(env.str("MASH_DATA_DIR", default=str(Path.cwd() / ".mash"))).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

# The qcluster parent forks its workers: sharing a connection pool across forks stalls
# them (see ecosystem notes), so the worker role runs without the pool.
IS_WORKER = env.str("MASH_PROCESS_ROLE", default="") == "worker" or "qcluster" in sys.argv


def _secret_key() -> str:
    given = env.str("MASH_SECRET_KEY", default="") or env.str("SECRET_KEY", default="")
    if given:
        return given
    path = DATA_DIR / "secret_key"
    if not path.exists():
        # Created exclusively so two processes starting together cannot write two keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = env.bool("MASH_DEBUG", default=env.bool("DEBUG", default=False))


def _allowed_hosts() -> list[str]:
    """The Host names the server answers to (also what a browser socket's Origin must be).

    Loopback names, the address `mash host serve --host` binds (MASH_API_HOST), and the
    names in MASH_ALLOWED_HOSTS (a proxy's public name; `*` allows any). Binding every
    interface adds this machine's own name and addresses: a client that reaches it by
    another name (a DNS name, a port-mapped container) needs MASH_ALLOWED_HOSTS.
    """
    hosts = ["localhost", ".localhost", "127.0.0.1", "[::1]"]
    bind = env.str("MASH_API_HOST", default="").strip()
    if bind in ("0.0.0.0", "::", "[::]"):
        import socket

        name = socket.gethostname()
        hosts += [name, socket.getfqdn()]
        try:
            hosts += [info[4][0] if ":" not in info[4][0] else f"[{info[4][0]}]"
                      for info in socket.getaddrinfo(name, None)]
        except OSError:
            pass
    elif bind:
        hosts.append(f"[{bind}]" if ":" in bind and not bind.startswith("[") else bind)
    hosts += env.list("MASH_ALLOWED_HOSTS", default=[])
    return list(dict.fromkeys(h for h in hosts if h))


ALLOWED_HOSTS = _allowed_hosts()
CSRF_TRUSTED_ORIGINS = env.list("MASH_CSRF_TRUSTED_ORIGINS", default=[])
# The largest request body read (bytes); a larger one is answered 413 PAYLOAD_TOO_LARGE.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MASH_MAX_BODY_BYTES", default=4 * 1024 * 1024)

INSTALLED_APPS = [
    # First, for its runserver (daphne's, imported only when it runs: mash_project/management).
    "mash_project",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "channels",
    "django_q",
    "mash_runtime",
    "mash_runtime.masher",
    "mash_api",
    "mash_telemetry",
]

MIDDLEWARE = [
    # Outermost, so it times the whole stack and logs the response clients get.
    "mash_telemetry.middleware.ApiRequestLogMiddleware",
    # Django's stock middleware, with hooks that run on the event loop under ASGI instead
    # of a thread hop each (mash_project/middleware.py).
    "mash_project.middleware.SecurityMiddleware",
    "mash_project.middleware.SessionMiddleware",
    "mash_project.middleware.CommonMiddleware",
    "mash_project.middleware.CsrfViewMiddleware",
    "mash_project.middleware.AuthenticationMiddleware",
    "mash_project.middleware.MessageMiddleware",
    "mash_project.middleware.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mash_project.urls"
ASGI_APPLICATION = "mash_project.asgi.application"
WSGI_APPLICATION = "mash_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# -- database -----------------------------------------------------------------------

_db_url = env.str("DATABASE_URL", default="") or env.str("MASH_DATABASE_URL", default="")
if _db_url:
    DATABASES = {"default": env.db_url_config(_db_url)}
else:
    DATABASES = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "mash.sqlite3")}
    }

_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE takes the write
    # lock up front so two processes wait on the busy timeout instead of failing with
    # "database is locked" halfway through a transaction.
    _db.setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": env.int("MASH_SQLITE_TIMEOUT", default=30),
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    # One file per test run (by process id): two runs side by side must not share a database.
    _db["TEST"] = {"NAME": env.str("MASH_TEST_SQLITE_NAME", default=str(DATA_DIR / f"test_mash_{os.getpid()}.sqlite3"))}
elif _db["ENGINE"] in ("django.db.backends.postgresql", "django.db.backends.postgresql_psycopg2"):
    _db["ENGINE"] = "django.db.backends.postgresql"
    if IS_WORKER or not env.bool("MASH_DB_POOL", default=True):
        _db["CONN_MAX_AGE"] = env.int("MASH_WORKER_CONN_MAX_AGE", default=60)
        _db["CONN_HEALTH_CHECKS"] = True
    else:
        # Under ASGI every request runs in a fresh thread: the pool, not CONN_MAX_AGE, reuses connections.
        _db["CONN_MAX_AGE"] = 0
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("MASH_DB_POOL_MIN", default=2),
            "max_size": env.int("MASH_DB_POOL_MAX", default=20),
            "timeout": env.float("MASH_DB_POOL_TIMEOUT", default=10.0),
        }
    # psycopg prepares a statement it has run this many times on a connection (Django turns
    # that off by default). It applies only to the statements bound on the server
    # (mash_runtime.db.bound_cursor: the engine's hot SQL): planning them cost more than
    # running them. "off" for a pooler that cannot keep prepared statements.
    _prepare = env.str("MASH_DB_PREPARE_THRESHOLD", default="5")
    _db.setdefault("OPTIONS", {})["prepare_threshold"] = None if _prepare.lower() == "off" else int(_prepare)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# -- queue, channels ------------------------------------------------------------------

REDIS_URL = env.str("MASH_REDIS_URL", default="")
WORKERS = env.int("MASH_WORKERS", default=2)
# Requests one worker process runs at once (mash_runtime/run/runner.py): models take
# seconds per call, so a process mostly waits, and capacity is requests in flight.
MASH_WORKER_CONCURRENCY = env.int("MASH_WORKER_CONCURRENCY", default=100)
# Threads (each with its own connection) a worker process does its runs' ORM work on;
# unset: 4 on PostgreSQL, 2 on SQLite.
MASH_WORKER_DB_THREADS = env.int("MASH_WORKER_DB_THREADS", default=0)
# Threads a web process runs its requests' sync code on (mash_project/asgi.py); unset: the
# pool's size less four on PostgreSQL, 8 on SQLite.
MASH_WEB_THREADS = env.int("MASH_WEB_THREADS", default=0)
# Seconds a stopping worker lets its runs reach a step boundary before handing them back.
MASH_WORKER_DRAIN_SECONDS = env.float("MASH_WORKER_DRAIN_SECONDS", default=20.0)
# A django-q task only delivers a request to its process's runner (it waits for a slot
# at most a quarter of this); leases, not the broker's retry, recover crashed requests,
# so the broker retry only needs to exceed the timeout. Compaction's model call is the
# longest task.
TASK_TIMEOUT = env.int("MASH_TASK_TIMEOUT", default=300)

Q_CLUSTER = {
    "name": "mash",
    "workers": WORKERS,
    # A worker process holds many runs: recycling drains it first (they are handed to the
    # other processes), so it is done rarely.
    "recycle": env.int("MASH_WORKER_RECYCLE", default=100000),
    "timeout": TASK_TIMEOUT,
    "retry": TASK_TIMEOUT + 120,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    # Successful tasks are not stored: the Request row is the durable record, and django-q2
    # scans every stored success under a lock to prune them (a fifth of a worker's CPU at load).
    # Failed tasks are still stored for the admin.
    "save_limit": -1,
    "label": "Queue",
    "poll": env.float("MASH_QUEUE_POLL", default=0.05),
}


if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # A client that reconnects and retries (mash_runtime/run/broker.py), made where it is used.
    Q_CLUSTER["broker_class"] = "mash_runtime.run.broker.RetryingRedis"
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
elif _db["ENGINE"] == "django.db.backends.postgresql" and env.bool("MASH_PG_NOTIFY", default=True):
    # PostgreSQL alone: new tasks and doorbells cross processes by LISTEN/NOTIFY
    # (mash_runtime/run/pg_broker.py, mash_runtime/notify_layer.py) instead of polling.
    # MASH_PG_NOTIFY=off behind a pooler in transaction mode (PgBouncer), which drops LISTEN.
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["broker_class"] = "mash_runtime.run.pg_broker.NotifyingORM"
    CHANNEL_LAYERS = {"default": {"BACKEND": "mash_runtime.notify_layer.PostgresNotifyLayer"}}
else:
    # SQLite (or MASH_PG_NOTIFY=off): the ORM broker polls, and streams poll the database.
    Q_CLUSTER["orm"] = "default"
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# -- mash -----------------------------------------------------------------------------

MASH_HOST_APP = env.str("MASH_HOST_APP", default="pilot.spec:build_host")
MASH_API_KEY = env.str("MASH_API_KEY", default="")
# Seconds a worker's claim on a request lasts without renewal before another may take over.
MASH_LEASE_SECONDS = env.int("MASH_LEASE_SECONDS", default=30)
# Seconds an API log row may wait to be written with others in one batch (0: write each
# row before its response returns). See mash_telemetry/middleware.py.
MASH_API_LOG_FLUSH_SECONDS = env.float("MASH_API_LOG_FLUSH_SECONDS", default=0.1)
# Skills published over the API with a `location` must resolve inside this directory:
# their text is served to the model, so a location elsewhere would hand it any file.
MASH_SKILLS_DIR = Path(env.str("MASH_SKILLS_DIR", default=str(DATA_DIR / "skills")))
# Masher's JSON-lines export of digests and eval records under <data dir>/masher/.
MASH_MASHER_EXPORT = env.bool("MASH_MASHER_EXPORT", default=False)
# What each MASH_* setting means and its default: mash_runtime/conf.py (code reads them there);
# contradictory ones are warned about at start-up (`manage.py check`).
# The host's agents as MCP tools at /mcp (mash_api/mcp_endpoint.py); off: /mcp is a 404.
MASH_MCP_ENDPOINT = env.bool("MASH_MCP_ENDPOINT", default=True)

# -- the rest ---------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": [
        "mash_api.renderers.JSONRenderer",
        # Served to logged-in staff browsers only: clients asking for JSON get JSON.
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["mash_api.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["mash_api.permissions.HasApiKey"],
    "EXCEPTION_HANDLER": "mash_api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Mash host API",
    "DESCRIPTION": "Submit requests to agents, stream their events, answer interactions, inspect sessions.",
    "VERSION": "v1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["mash_api.permissions.HasApiKey"],
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("MASH_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
LOGIN_URL = "/admin/login/"

LOG_LEVEL = env.str("MASH_LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "mash": {"level": LOG_LEVEL},
        "mash_core": {"level": LOG_LEVEL},  # mcp.client.connected / .error
        "mash_runtime": {"level": LOG_LEVEL},
        "mash_api": {"level": LOG_LEVEL},
        # django-q2 logs under a hyphenated name; without this its messages vanish.
        "django-q": {"level": env.str("MASH_QUEUE_LOG_LEVEL", default="WARNING")},
    },
}
