"""The plumbing of the loopback model fakes (openai_responses.py, gemini_api.py): a stdlib
`ThreadingHTTPServer` on a thread of the test process that records every request it gets
(path, headers, JSON body) and answers through the subclass's `answer`.

Tests may `push(status, body)` canned answers, played first in order, before the fake's own
behaviour. Real processes (daphne, qcluster) reach it over loopback like any other server.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any


class SSE(list):
    """An answer sent as server-sent events: a list of (event name or None, JSON data); the
    connection closes after the last one, as the vendors' streams do."""


class HTTPFake:
    """Subclasses implement `answer(seen) -> (status, json_body)`; a body that is an `SSE`
    goes out as `text/event-stream`."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self._canned: list[tuple[int, Any]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- what tests use ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def push(self, status: int, body: Any) -> None:
        """Answer the next request with `body` (JSON) and `status`, whatever it asks."""
        with self._lock:
            self._canned.append((status, body))

    def bodies(self, path_part: str = "") -> list[Any]:
        with self._lock:
            return [s.body for s in self.requests if path_part in s.path]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._canned.clear()

    # -- what subclasses implement ----------------------------------------------------------

    def answer(self, seen: Seen) -> tuple[int, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the server -------------------------------------------------------------------------

    def _handle(self, seen: Seen) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(seen)
            canned = self._canned.pop(0) if self._canned else None
        if canned is not None:
            return canned
        return self.answer(seen)

    def start(self) -> "HTTPFake":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' pools expect

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = raw.decode(errors="replace")
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                try:
                    status, payload = fake._handle(seen)
                except Exception as exc:  # a fake's bug shows up as a 500 with its text
                    status, payload = 500, {"error": {"message": f"fake crashed: {type(exc).__name__}: {exc}"}}
                if isinstance(payload, SSE):
                    self.send_response(status)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("connection", "close")
                    self.end_headers()
                    for name, event in payload:
                        head = f"event: {name}\n" if name else ""  # Gemini's stream names none
                        self.wfile.write(f"{head}data: {json.dumps(event)}\n\n".encode())
                        self.wfile.flush()
                    self.close_connection = True
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_POST = do_GET = _serve

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @contextlib.contextmanager
    def running(self) -> Iterator["HTTPFake"]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def sample(schema: Any, root: Any = None) -> Any:
    """A value valid against a (simple) JSON schema: what a model's structured answer would be.
    A nullable optional field (OpenAI strict style: anyOf [X, null]) comes back null."""
    root = root if root is not None else schema
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return sample(target, root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    variants = schema.get("anyOf") or schema.get("oneOf")
    if variants:
        if any(isinstance(v, dict) and v.get("type") in ("null", "NULL") for v in variants):
            return None
        return sample(variants[0], root)
    if schema.get("nullable"):
        return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = str(kind or "object").lower()
    if kind == "object":
        props = schema.get("properties") or {}
        required = schema.get("required") or list(props)
        return {name: sample(props[name], root) for name in required if name in props}
    if kind == "array":
        return [sample(schema.get("items") or {"type": "string"}, root)]
    return {"string": "yes", "integer": 7, "number": 1.5, "boolean": True}.get(kind)
