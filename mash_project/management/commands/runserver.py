"""`manage.py runserver`: daphne's (ASGI, so SSE and WebSockets work), plus a worker.

A Django developer's first habit is `runserver`; without a worker beside it a request
would stay `queued` forever. The worker is a `qcluster` child started by the process
that serves, so the autoreloader restarts it with the code; `--noworker` leaves workers
to `mash qcluster` elsewhere.

daphne's own command comes with its app, and that app imports Twisted at setup in every
process (about 25 MiB each, six times over in a worker cluster that never serves HTTP).
Here it is imported only when runserver runs; `mash_project` is first in INSTALLED_APPS so
this command wins over staticfiles' one.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading

from daphne.management.commands.runserver import Command as DaphneRunserver
from django.conf import settings

# A reload should not wait out a production drain: runs still going are handed back
# (their leases released) and the new worker takes them over.
DEV_DRAIN_SECONDS = "2"


class Command(DaphneRunserver):
    help = ("Serve the API for development with daphne (HTTP, SSE, WebSocket), and run a worker (django-q2 "
            "cluster) beside it; both restart when code changes.")

    def add_arguments(self, parser):
        super().add_arguments(parser)
        parser.add_argument("--noworker", action="store_false", dest="use_worker",
                            help="do not start a worker: requests wait for `mash qcluster` run elsewhere")

    def run(self, **options):
        # SIGTERM (a process manager, `kill`) would end this process without atexit handlers,
        # leaving the worker behind: make it an ordinary exit. (Only the main thread may set it.)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        return super().run(**options)

    def inner_run(self, *args, **options):
        if options.get("use_worker", True):
            self.start_worker()
        return super().inner_run(*args, **options)

    def start_worker(self) -> None:
        env = {**os.environ, "MASH_PROCESS_ROLE": "worker"}
        env.setdefault("MASH_WORKER_DRAIN_SECONDS", DEV_DRAIN_SECONDS)
        worker = subprocess.Popen([sys.executable, "-m", "mash_project.cli", "qcluster"], env=env)
        self.stdout.write(f"Starting worker (pid {worker.pid}): {settings.WORKERS} process(es) x "
                          f"{settings.MASH_WORKER_CONCURRENCY} requests in flight; --noworker to run none.\n")

        def stop() -> None:
            if worker.poll() is not None:
                return
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(int(env["MASH_WORKER_DRAIN_SECONDS"]) + 10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

        # The autoreloader ends this process with sys.exit(3), Ctrl-C with KeyboardInterrupt:
        # both run atexit handlers.
        atexit.register(stop)
