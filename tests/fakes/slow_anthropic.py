"""A slow Anthropic Messages API on loopback: every call answers after `--delay` seconds,
and the server counts the calls it holds at once (fakellm has no latency setting).

    python -m tests.fakes.slow_anthropic --port 8099 --delay 2 [--tool-first]

`POST /v1/messages` answers with text; with `--tool-first`, a request that offers tools and
has no tool result yet gets a call of its first tool (required string arguments filled
with "k"), so each request makes two model calls and one tool call. `GET /_stats` returns
`{calls, in_flight, max_in_flight}`; `POST /_reset` zeroes them; `POST /_config` with
`{"delay": s}` changes the delay. `SlowAnthropic` starts it in a subprocess for tests and
benches.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]


def build_app(delay: float, tool_first: bool):
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state = {"delay": delay, "calls": 0, "in_flight": 0, "max_in_flight": 0}
    ids = itertools.count(1)

    def answer(body: dict) -> dict:
        messages = body.get("messages") or []
        last = messages[-1] if messages else {}
        content = last.get("content") if isinstance(last, dict) else None
        has_result = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        tools = body.get("tools") or []
        if tool_first and tools and not has_result:
            tool = tools[0]
            required = (tool.get("input_schema") or {}).get("required") or []
            blocks = [{"type": "tool_use", "id": f"toolu_{next(ids)}", "name": tool["name"],
                       "input": {name: "k" for name in required}}]
            stop = "tool_use"
        else:
            blocks, stop = [{"type": "text", "text": "done"}], "end_turn"
        return {"id": f"msg_{next(ids)}", "type": "message", "role": "assistant", "model": body.get("model", "fake"),
                "content": blocks, "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0,
                          "cache_creation_input_tokens": 0}}

    async def messages(request: Request):
        body = await request.json()
        state["calls"] += 1
        state["in_flight"] += 1
        state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
        try:
            await asyncio.sleep(state["delay"])
        finally:
            state["in_flight"] -= 1
        return JSONResponse(answer(body))

    async def stats(request: Request):
        return JSONResponse({k: state[k] for k in ("calls", "in_flight", "max_in_flight", "delay")})

    async def reset(request: Request):
        state.update(calls=0, max_in_flight=state["in_flight"])
        return JSONResponse({"ok": True})

    async def configure(request: Request):
        body = await request.json()
        if "delay" in body:
            state["delay"] = float(body["delay"])
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]), Route("/_stats", stats),
                             Route("/_reset", reset, methods=["POST"]), Route("/_config", configure, methods=["POST"])])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class SlowAnthropic:
    def __init__(self, url: str, proc: subprocess.Popen):
        self.url, self.proc = url, proc

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/_stats", timeout=5).json()

    def reset(self) -> None:
        import httpx

        httpx.post(f"{self.url}/_reset", timeout=5).raise_for_status()

    @property
    def env(self) -> dict[str, str]:
        """What points the `anthropic` SDK (and so `AnthropicProvider`) here."""
        return {"ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_API_KEY": "sk-fake-slow-anthropic"}


@contextlib.contextmanager
def run_slow_anthropic(delay: float, *, tool_first: bool = False, log_path: Path | None = None) -> Iterator[SlowAnthropic]:
    import httpx

    port = free_port()
    argv = [sys.executable, "-m", "tests.fakes.slow_anthropic", "--port", str(port), "--delay", str(delay)]
    if tool_first:
        argv.append("--tool-first")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    fake = SlowAnthropic(f"http://127.0.0.1:{port}", proc)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                fake.stats()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the slow Anthropic fake did not start") from None
                time.sleep(0.05)
        yield fake
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds each call takes (default 1)")
    parser.add_argument("--tool-first", action="store_true",
                        help="call the first offered tool before answering (two model calls per request)")
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(build_app(args.delay, args.tool_first), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False, backlog=4096, timeout_keep_alive=60)


if __name__ == "__main__":
    main()
