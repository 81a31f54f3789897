"""A small synchronous HTTP client for a Mash server's `/api/v1` routes (httpx).

Used by the `mash` client commands and the REPL, and usable on its own::

    from mash_api.client import MashClient

    with MashClient("http://127.0.0.1:8000", api_key="...") as client:
        agent = client.health()["deployment"]["primary_agent_id"]
        rid = client.submit(agent, "hello")["request_id"]
        for event in client.request_events(agent, rid):
            print(event.name, event.data)

Every failure is a `ClientError` whose text is one line: `ApiError` for an error
status (`GET /api/v1/health failed (401): <error.message>`), `ConnectionFailed` when
the server cannot be reached (`cannot reach http://...: <reason>`). Only
`Authorization: Bearer <key>` is sent. Importing this module does not need Django.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
# A stream may stay quiet for a long time (the server sends keep-alives every 15 s,
# but an interaction may wait for an hour): no read timeout.
STREAM_TIMEOUT = httpx.Timeout(30.0, connect=10.0, read=None)
TERMINAL_EVENTS = ("request.completed", "request.error")


class ClientError(Exception):
    """A failed client call; `str()` is the one line to show the user."""


class ConnectionFailed(ClientError):
    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach {url}: {reason}")


class StreamInterrupted(ClientError):
    """An event stream broke after it had started (the caller may resume with `after`)."""


class ApiError(ClientError):
    """The server answered with an error status (the `{"error": {...}}` envelope)."""

    def __init__(self, method: str, path: str, status: int, message: str, code: str = "", details: Any = None):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        self.code = code
        self.details = details if details is not None else {}
        super().__init__(f"{method} {path} failed ({status}): {message}")


@dataclass
class SSEEvent:
    """One server-sent event: `id` (the request's sequence number), `name`, parsed `data`."""

    name: str
    data: Any
    id: int | None = None


@dataclass
class _FrameBuilder:
    name: str = ""
    id: int | None = None
    data: list[str] = field(default_factory=list)

    def build(self) -> SSEEvent | None:
        if not self.data:
            return None
        raw = "\n".join(self.data)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            data = {"raw": raw}
        return SSEEvent(self.name or "message", data, self.id)


def parse_sse(lines) -> Iterator[SSEEvent]:
    """SSE events from an iterable of text lines (comments and keep-alives skipped)."""
    frame = _FrameBuilder()
    for line in lines:
        line = line.rstrip("\r\n")
        if not line:
            event = frame.build()
            if event is not None:
                yield event
            frame = _FrameBuilder()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            frame.name = value
        elif name == "data":
            frame.data.append(value)
        elif name == "id":
            try:
                frame.id = int(value)
            except ValueError:
                frame.id = None
    event = frame.build()
    if event is not None:
        yield event


def normalize_base_url(url: str) -> str:
    """`http://host:8000`, `http://host:8000/`, `http://host:8000/api/v1` -> `http://host:8000`."""
    url = (url or "").strip()
    if url and "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def subagent_session_id(primary_session_id: str, agent_id: str) -> str:
    """The session the server gives a subagent for one primary session: `subagent:<id>:<24 hex>`."""
    digest = hashlib.sha256(f"{primary_session_id}\x00{agent_id}".encode()).hexdigest()[:24]
    return f"subagent:{agent_id}:{digest}"


def _seg(value: str) -> str:
    return quote(str(value).strip(), safe="")


def _error_message(response: httpx.Response) -> tuple[str, str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return str(error.get("message") or error.get("code") or ""), str(error.get("code") or ""), error.get("details")
    text = " ".join((response.text or "").split())
    return (text[:200] or response.reason_phrase or "error"), "", None


class MashClient:
    """The `/api/v1` routes a client uses. `base_url` is the server's root (`http://host:port`)."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = normalize_base_url(base_url)
        if not self.base_url or not urlsplit(self.base_url).netloc:
            raise ClientError(f"not a server URL: {base_url!r} (expected e.g. http://127.0.0.1:8000)")
        self.api_key = (api_key or "").strip() or None
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    # -- plumbing --------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "MashClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail_connect(self, exc: Exception) -> ConnectionFailed:
        reason = str(exc) or type(exc).__name__
        return ConnectionFailed(self.base_url, reason)

    def call(self, method: str, path: str, *, json_body: Any = None, params: dict | None = None) -> Any:
        """One JSON call; returns the envelope's `data` (or the whole body if it has none)."""
        full = API_PREFIX + path
        try:
            response = self._http.request(method, full, json=json_body, params=params)
        except httpx.HTTPError as exc:
            raise self._fail_connect(exc) from None
        if response.status_code >= 400:
            message, code, details = _error_message(response)
            raise ApiError(method, full, response.status_code, message, code, details)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(method, full, response.status_code, "the server did not answer with JSON") from None
        return body.get("data", body) if isinstance(body, dict) else body

    def stream(self, path: str, *, after: int | None = None, params: dict | None = None) -> Iterator[SSEEvent]:
        """Follow an SSE route until the server closes it. `after` resumes after that event id."""
        full = API_PREFIX + path
        headers = {"Accept": "text/event-stream"}
        if after:
            headers["Last-Event-ID"] = str(after)
        started = False
        try:
            with self._http.stream("GET", full, headers=headers, params=params, timeout=STREAM_TIMEOUT) as response:
                if response.status_code >= 400:
                    response.read()
                    message, code, details = _error_message(response)
                    raise ApiError("GET", full, response.status_code, message, code, details)
                started = True
                yield from parse_sse(response.iter_lines())
        except httpx.HTTPError as exc:
            if started:
                raise StreamInterrupted(f"GET {full}: the event stream broke ({exc or type(exc).__name__})") from None
            raise self._fail_connect(exc) from None

    # -- discovery -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.call("GET", "/health")

    def agents(self) -> dict[str, Any]:
        """`{agents: [{agent_id, role, metadata}], primary_agent_id}`."""
        return self.call("GET", "/agent")

    def agent(self, agent_id: str) -> dict[str, Any]:
        return self.call("GET", f"/agent/{_seg(agent_id)}")

    # -- sessions --------------------------------------------------------------------------

    def sessions(self, agent_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/agent/{_seg(agent_id)}/sessions").get("sessions", [])

    def session(self, agent_id: str, session_id: str) -> dict[str, Any]:
        return self.call("GET", f"/agent/{_seg(agent_id)}/sessions/{_seg(session_id)}")

    def history(self, agent_id: str, session_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        params = {"limit": limit} if limit else None
        return self.call("GET", f"/agent/{_seg(agent_id)}/sessions/{_seg(session_id)}/history", params=params).get(
            "turns", [])

    def compact(self, agent_id: str, session_id: str, reason: str = "manual") -> dict[str, Any]:
        """`{summary_text, turn_id}`: the session's turns since the last summary, summarised."""
        return self.call("POST", f"/agent/{_seg(agent_id)}/sessions/{_seg(session_id)}/compact",
                         json_body={"reason": reason})

    # -- requests --------------------------------------------------------------------------

    def submit(self, agent_id: str, message: str, session_id: str | None = None,
               structured_output: dict | None = None, *, tokens: bool = False) -> dict[str, Any]:
        """`{request_id, agent_id, session_id, status: "accepted"}`. `tokens`: this client will
        follow the token deltas, from the first model call on (`?stream=tokens`)."""
        body: dict[str, Any] = {"message": message}
        if session_id:
            body["session_id"] = session_id
        if structured_output is not None:
            body["structured_output"] = structured_output
        return self.call("POST", f"/agent/{_seg(agent_id)}/request", json_body=body,
                         params={"stream": "tokens"} if tokens else None)

    def request_events(self, agent_id: str, request_id: str, *, after: int | None = None,
                       tokens: bool = False) -> Iterator[SSEEvent]:
        """A request's events; with `tokens`, also `agent.delta` frames of the running step's text."""
        return self.stream(f"/agent/{_seg(agent_id)}/request/{_seg(request_id)}/events", after=after,
                           params={"stream": "tokens"} if tokens else None)

    def answer(self, agent_id: str, request_id: str, interaction_id: str, response: Any) -> dict[str, Any]:
        return self.call("POST", f"/agent/{_seg(agent_id)}/request/{_seg(request_id)}/interaction",
                         json_body={"interaction_id": interaction_id, "response": response})

    def request_status(self, agent_id: str, request_id: str) -> dict[str, Any]:
        return self.call("GET", f"/agent/{_seg(agent_id)}/request/{_seg(request_id)}/status")

    def cancel(self, agent_id: str, request_id: str) -> dict[str, Any]:
        return self.call("POST", f"/agent/{_seg(agent_id)}/request/{_seg(request_id)}/cancel")

    def resume(self, agent_id: str, request_id: str) -> dict[str, Any]:
        return self.call("POST", f"/agent/{_seg(agent_id)}/request/{_seg(request_id)}/resume")

    # -- workflows -------------------------------------------------------------------------

    def workflows(self) -> list[dict[str, Any]]:
        return self.call("GET", "/workflow").get("workflows", [])

    def run_workflow(self, workflow_id: str, *, dedup_key: str | None = None, input: Any = None) -> dict[str, Any]:
        """`{run_id, workflow_id, status}`."""
        body: dict[str, Any] = {}
        if dedup_key:
            body["dedup_key"] = dedup_key
        if input is not None:
            body["input"] = input
        return self.call("POST", f"/workflow/{_seg(workflow_id)}/run", json_body=body)

    def workflow_run(self, workflow_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/workflow/{_seg(workflow_id)}/runs/{_seg(run_id)}")

    def workflow_events(self, workflow_id: str, run_id: str, *, after: int | None = None) -> Iterator[SSEEvent]:
        return self.stream(f"/workflow/{_seg(workflow_id)}/runs/{_seg(run_id)}/events", after=after)
