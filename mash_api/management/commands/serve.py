"""`mash host serve` / `python manage.py serve`: migrate, then run daphne and a django-q2
cluster as supervised child processes until SIGINT/SIGTERM.

It lives in mash_api rather than mash_runtime because it refuses to bind a public
address without an API key, and API keys are mash_api's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rich.console import Console

from mash_core.errors import ConfigError
from mash_runtime.conf import conf

# A child that dies more often than this is not going to get better by restarting.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
# The worker drains first (MASH_WORKER_DRAIN_SECONDS, runs reach a step boundary or are
# handed back): give it that and some more before its process group is killed.
SHUTDOWN_MARGIN_SECONDS = 15.0


def _env_port() -> int:
    raw = os.environ.get("MASH_API_PORT") or os.environ.get("PORT") or "8000"
    try:
        return int(raw)
    except ValueError:
        raise CommandError(f"MASH_API_PORT/PORT must be a number, got {raw!r}") from None


# Twisted listens with a backlog of 50: a burst of new connections (256 clients opening
# at once) overflowed the accept queue, and the kernel dropped their handshakes, so
# clients waited 1, 3 or 7 s for SYN retries or saw their connection reset.
LISTEN_BACKLOG = 1024


def listen_endpoint(host: str, port: int) -> str:
    """daphne's endpoint for host:port (its own escaping), with a backlog fit for bursts."""
    from daphne.endpoints import build_endpoint_description_strings

    return build_endpoint_description_strings(host=host, port=port)[0] + f":backlog={LISTEN_BACKLOG}"


def web_argv(python: str, bind: str, port: int, access_log: str | None = None) -> list[str]:
    """The web child's command line: daphne's own options, run through `run_web` below."""
    argv = [python, "-m", "mash_api.management.commands.serve", "-e", listen_endpoint(bind, port)]
    if access_log is not None:
        argv += ["--access-log", access_log]
    return argv + ["mash_project.asgi:application"]


def run_web(argv: list[str]) -> None:
    """daphne's command line, with its access log off unless `--access-log` is given, and then
    with secret query values redacted. daphne itself logs every request, query and all, to
    stdout at its default verbosity: keys sent as `?api_key=` would land in whatever keeps it."""
    from daphne.cli import CommandLineInterface
    from daphne.server import Server

    wanted = any(arg == "--access-log" or arg.startswith("--access-log=") for arg in argv)

    class WebServer(Server):
        def __init__(self, *args, action_logger=None, **kwargs):
            if action_logger is not None:
                action_logger = redacting(action_logger) if wanted else None
            super().__init__(*args, action_logger=action_logger, **kwargs)

    cli = CommandLineInterface()
    cli.server_class = WebServer
    cli.run(argv)


def redacting(action_logger):
    def log(protocol, action, details):
        # Imported here: the app (and so Django) is loaded by the time daphne logs anything.
        from mash_telemetry.middleware import redact_url

        if isinstance(details.get("path"), str):
            details = {**details, "path": redact_url(details["path"])}
        action_logger(protocol, action, details)

    return log


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name, self.argv, self.env = name, argv, env
        self.proc: subprocess.Popen | None = None
        self.restarts: list[float] = []

    def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches only us, and we shut children down in order.
        self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def kill_group(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Command(BaseCommand):
    help = (
        "Serve the host: apply migrations, then run the web server (daphne: HTTP, SSE, WebSocket) and the "
        "worker cluster (django-q2) until interrupted. With nothing configured it runs on SQLite under "
        "MASH_DATA_DIR with no other service."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host-app", default=None,
                            help="host app as module:attr returning the host (default: MASH_HOST_APP, "
                                 f"currently {conf.HOST_APP})")
        parser.add_argument("--host", default=os.environ.get("MASH_API_HOST", "127.0.0.1"),
                            help="address to bind (default: MASH_API_HOST or 127.0.0.1)")
        parser.add_argument("--port", type=int, default=None, help="port to bind (default: MASH_API_PORT, PORT or 8000)")
        parser.add_argument("--workers", type=int, default=None,
                            help=f"worker processes running requests (default: MASH_WORKERS, currently {conf.WORKERS})")
        parser.add_argument("--concurrency", type=int, default=None,
                            help="requests each worker process runs at once (default: MASH_WORKER_CONCURRENCY, "
                                 f"currently {conf.WORKER_CONCURRENCY})")
        parser.add_argument("--api-key", default=None,
                            help="require this API key on /api/v1 (default: MASH_API_KEY, or the file "
                                 "MASH_API_KEY_FILE names: prefer the file, as a flag's value shows in `ps`; "
                                 "keys made with `mash apikey create` also work)")
        parser.add_argument("--insecure", action="store_true",
                            help="allow binding a non-loopback address with no API key configured")
        parser.add_argument("--no-migrate", action="store_true", help="skip applying database migrations")
        parser.add_argument("--access-log", nargs="?", const="-", default=None, metavar="FILE",
                            help="write the web server's access log to FILE (to stdout with no FILE), with the "
                                 "values of secret query parameters (api_key, token, password, ...) redacted; "
                                 "off by default")
        parser.add_argument("--no-worker", action="store_true",
                            help="run only the web process (workers run elsewhere: `mash qcluster`)")

    @staticmethod
    def check_mcp_servers(host, console) -> None:
        """A tool name two tools of an agent would share refuses to start (every run of that
        agent would fail); an MCP server out of reach is a warning (runs carry on without it)."""
        from mash_runtime.mcp_tools import check_at_start, has_servers

        if not has_servers(host):
            return
        from mash_runtime.run.prepare import build_agent

        with console.status("reaching the agents' MCP servers"):
            try:
                unreachable = check_at_start(host, build_agent)
            except ConfigError as exc:
                raise CommandError(str(exc)) from None
        for line in unreachable:
            console.print(f"[yellow]warning:[/] {line}")

    def handle(self, *args, **options):
        console = Console(stderr=True, soft_wrap=True)  # URLs must stay on one line to be clickable
        env = dict(os.environ)
        env["DJANGO_SETTINGS_MODULE"] = os.environ.get("DJANGO_SETTINGS_MODULE", "mash_project.settings")
        env["MASH_DATA_DIR"] = str(conf.DATA_DIR)
        host_app = options["host_app"] or conf.HOST_APP
        env["MASH_HOST_APP"] = host_app
        if options["api_key"]:
            # The flag wins over a key file; the children would refuse to start given both.
            env.pop("MASH_API_KEY_FILE", None)
            env["MASH_API_KEY"] = options["api_key"]
            settings.MASH_API_KEY = options["api_key"]
        if options["workers"] is not None:
            if options["workers"] < 1:
                raise CommandError("--workers must be at least 1")
            env["MASH_WORKERS"] = str(options["workers"])
        if options["concurrency"] is not None:
            if options["concurrency"] < 1:
                raise CommandError("--concurrency must be at least 1")
            env["MASH_WORKER_CONCURRENCY"] = str(options["concurrency"])
        port = options["port"] if options["port"] is not None else _env_port()
        bind = options["host"]

        settings.MASH_HOST_APP = host_app
        from mash_runtime.host import load_host, set_host
        from mash_runtime.host_sync import sync_host

        with console.status(f"loading host app {host_app}"):
            try:
                host = load_host(host_app)
            except ConfigError as exc:
                raise CommandError(str(exc)) from None
            set_host(host)
        if not options["no_migrate"]:
            with console.status("applying database migrations"):
                call_command("migrate", interactive=False, verbosity=0)
        sync_host(host)
        self.check_mcp_servers(host, console)

        from mash_api.auth import check_bind_address, forget_cached_configuration

        forget_cached_configuration()
        try:
            check_bind_address(bind, options["insecure"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        env["MASH_API_HOST"] = bind  # the web process answers to the bound address (settings.ALLOWED_HOSTS)

        python = sys.executable
        children = [
            Child("web", web_argv(python, bind, port, options["access_log"]), env),
        ]
        if not options["no_worker"]:
            children.append(
                Child("worker", [python, "-m", "mash_project.cli", "qcluster"], {**env, "MASH_PROCESS_ROLE": "worker"})
            )
        stopping = {"signal": None}

        def on_signal(signum, frame):
            stopping["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        for child in children:
            child.start()
        shown = "localhost" if bind in ("127.0.0.1", "0.0.0.0", "::") else bind
        base = f"http://{shown}:{port}"
        console.print(f"[bold green]Mash host[/] serving [bold]{host.primary_agent_id}[/] "
                      f"({len(host.agents)} agent(s)) from {host_app}")
        console.print(f"  API        {base}/api/v1/   (docs {base}/api/v1/docs/)")
        console.print(f"  admin      {base}/admin/   (create a login: mash createsuperuser)")
        console.print(f"  telemetry  {base}/telemetry/")
        if conf.MCP_ENDPOINT:
            console.print(f"  MCP        {base}/mcp   (Streamable HTTP: the agents as tools, same key as the API)")
        console.print(f"  database   {settings.DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}, "
                      f"data in {conf.DATA_DIR}")
        if bind in ("0.0.0.0", "::", "[::]") and not env.get("MASH_ALLOWED_HOSTS"):
            console.print("  hosts      localhost and this machine's own names; clients using another name (a DNS "
                          "name, a mapped port) need MASH_ALLOWED_HOSTS=name")
        if options["no_worker"]:
            console.print("  workers    none here (run `mash qcluster` where requests should run)")
        else:
            processes = int(env.get("MASH_WORKERS") or conf.WORKERS)
            slots = int(env.get("MASH_WORKER_CONCURRENCY") or conf.WORKER_CONCURRENCY)
            console.print(f"  workers    {processes} process(es) x {slots} requests in flight = {processes * slots}")
        console.print("Press Ctrl-C to stop.")
        try:
            self.supervise(children, stopping, console)
        finally:
            self.shutdown(children, console)
        return None

    def supervise(self, children: list[Child], stopping: dict, console: Console) -> None:
        while stopping["signal"] is None:
            time.sleep(0.2)
            for child in children:
                if child.alive() or stopping["signal"] is not None:
                    continue
                now = time.monotonic()
                child.restarts = [t for t in child.restarts if now - t < RESTART_WINDOW_SECONDS]
                if len(child.restarts) >= MAX_RESTARTS:
                    raise CommandError(f"the {child.name} process keeps exiting "
                                       f"(code {child.proc.returncode}); giving up")
                console.print(f"[yellow]{child.name} exited with code {child.proc.returncode}; restarting[/]")
                child.kill_group()
                child.restarts.append(now)
                child.start()

    def shutdown(self, children: list[Child], console: Console) -> None:
        console.print("stopping...")
        # Web first, so no new requests arrive; the worker then finishes or parks what it holds.
        for child in children:
            child.terminate()
        deadline = time.monotonic() + conf.WORKER_DRAIN_SECONDS + SHUTDOWN_MARGIN_SECONDS
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"[yellow]{child.name} did not stop in time; killing it[/]")
            child.kill_group()
            if child.proc.poll() is None:
                child.proc.wait(5)


if __name__ == "__main__":  # the web child (`web_argv`)
    run_web(sys.argv[1:])
