"""Run fakellm (a real HTTP mock of the OpenAI/Anthropic APIs) in a subprocess for tests.

fakellm answers `POST /v1/messages` from YAML rules (first match wins): `when`
keys are messages_contain, tools_include, tool_result_contains, header.<name>,
turn, ...; `respond` has content, tool_calls [{name, arguments}], status, error.
It does not record request bodies, so wire checks must capture them client-side.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class FakeLLM:
    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        """Forget conversation state (turn counts, tool results seen)."""
        httpx.post(f"{self.url}/_fakellm/reset", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_fakellm/stats", timeout=5).json()


@contextlib.contextmanager
def run_fakellm(rules: list[dict[str, Any]], startup_timeout: float = 15.0) -> Iterator[FakeLLM]:
    """Start fakellm with `rules` on a free loopback port; stop it on exit."""
    with tempfile.TemporaryDirectory(prefix="fakellm-") as tmp:
        config = Path(tmp) / "fakellm.yaml"
        config.write_text(yaml.safe_dump({"version": 1, "rules": rules}))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "server.log", "w+b")
        cmd = [sys.executable, "-m", "fakellm.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        cmd += ["--config", str(config)]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=dict(os.environ))
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"fakellm exited with {proc.returncode}: {log.read().decode(errors='replace')}")
                try:
                    if httpx.get(f"{url}/_fakellm/stats", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"fakellm did not answer on {url} within {startup_timeout}s")
                time.sleep(0.05)
            yield FakeLLM(url)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
