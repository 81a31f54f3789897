"""Property-based contract test: schemathesis fuzzes every operation of the live OpenAPI schema.

A real daphne + qcluster (tests/compat/conftest.py) serves the project on the test
database with `MASH_API_KEY=secret`; the schema is read from `/api/v1/schema/?format=json`
as a client would. Checks on every response:

- no 5xx (`not_a_server_error`);
- every 4xx body is the error envelope `{"error": {"code": str, "message": str, ...}}`;
- every 2xx body of an `/api/v1` route is `{"data": ...}`.

The SSE routes (`.../events`, `.../events/stream`) never end on their own, so they are
excluded. Generated path parameters are sometimes swapped for ids that exist (the agents,
a finished request's session/request/trace ids, a request parked on an approval), so
the fuzzing reaches past the 404s; path, query and body values are sometimes swapped for
text no database stores (NUL, lone surrogates) or NaN; one case in ten goes without the key.
"""

from __future__ import annotations

import json
import os
import re
import traceback
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup

from tests.compat.conftest import cluster_env, clusters, mash_host_app, mash_server, wait_for  # noqa: F401

pytestmark = pytest.mark.e2e

# `.../request/{request_id}/events`, `.../runs/{run_id}/events`, `/telemetry/.../events/stream`
# (but not the JSON lists `/telemetry/events` and `/telemetry/api/events`).
SSE_PATHS = r"\}/events/?$|/events/stream/?$"
# Per operation; raise it (MASH_FUZZ_EXAMPLES=200) for a deeper run by hand.
MAX_EXAMPLES = int(os.environ.get("MASH_FUZZ_EXAMPLES", "15"))

# Filled by the `live_schema` fixture before generation starts: path parameter -> values that exist.
KNOWN: dict[str, list[str]] = {}


def data(response) -> dict:
    assert response.status_code < 300, f"{response.request.method} {response.request.url}: {response.text}"
    return response.json()["data"]


def seed(server) -> dict[str, list[str]]:
    """A finished request and one parked on an approval, for the fuzzer to aim at."""
    with server.client() as http:
        done = data(http.post("/api/v1/agent/primary/request", json={"message": "seeded", "session_id": "fuzz-seed"}))
        server.wait_terminal("primary", done["request_id"])
        history = data(http.get("/api/v1/agent/primary/sessions/fuzz-seed/history"))["turns"]
        plan = {"script": [{"tool_calls": [{"name": "write_file", "arguments": {"path": "/dev/null", "text": ""}}]},
                           "never"]}
        parked = data(http.post("/api/v1/agent/primary/request",
                                json={"message": json.dumps(plan), "session_id": "fuzz-parked"}))
        wait_for(lambda: http.get(f"/api/v1/agent/primary/request/{parked['request_id']}/status")
                 .json().get("data", {}).get("status") == "waiting_input", what="the seeded approval to park")
    return {
        "agent_id": ["primary"],  # the seeded rows are primary's (unaimed draws try other agents)
        "session_id": ["fuzz-seed", "fuzz-parked"],
        "request_id": [done["request_id"], parked["request_id"]],
        "trace_id": [history[-1]["turn_id"]],
    }


# Text no database column stores: NUL (PostgreSQL text and jsonb refuse it) and lone
# surrogates (UTF-8 cannot encode them; a JSON body carries one as "\\ud800"). The plain
# fuzzer seldom draws them; these hooks mix them in so every route is tried with them.
HOSTILE_TEXT = ["\x00", "a\x00b", "\ud800", "x\udfff"]
HOSTILE_IN_URL = ["\x00", "a\x00b"]  # a URL cannot carry a surrogate at all


def with_known_ids(context, path_parameters: dict | None) -> st.SearchStrategy:
    """`flatmap_path_parameters`: keep the generated values, aim some at existing rows, or make one hostile."""
    if not path_parameters:
        return st.just(path_parameters)
    fixed = {k: st.just(v) for k, v in path_parameters.items()}
    aimed = {name: st.sampled_from(KNOWN[name]) for name in path_parameters if name in KNOWN}
    aimed_strategy = st.fixed_dictionaries({**fixed, **aimed})
    # Weights 1 : 3 : 1. Aimed often enough that most routes about a request or a session
    # answer 2xx at least once in MAX_EXAMPLES draws (half of which are negative cases).
    return st.one_of(
        st.just(path_parameters),
        aimed_strategy,
        aimed_strategy,
        aimed_strategy,
        st.sampled_from(sorted(path_parameters)).flatmap(
            lambda name: st.fixed_dictionaries({**fixed, **aimed, name: st.sampled_from(HOSTILE_IN_URL)})),
    )


def with_hostile_query(context, query: dict | None) -> st.SearchStrategy:
    """`flatmap_query`: sometimes one query value is hostile."""
    if not query:
        return st.just(query)
    return st.one_of(  # weights 2 : 1
        st.just(query),
        st.just(query),
        st.sampled_from(sorted(query)).flatmap(
            lambda name: st.sampled_from(HOSTILE_IN_URL).map(lambda bad: {**query, name: bad})),
    )


def _leaves(value, at=()):
    if isinstance(value, (dict, list)) and not value:
        yield at
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*at, index))
    else:
        yield at


def _replace(value, at, new):
    if not at:
        return new
    head, rest = at[0], at[1:]
    if isinstance(value, dict):
        return {**value, head: _replace(value[head], rest, new)}
    return [_replace(item, rest, new) if index == head else item for index, item in enumerate(value)]


def with_hostile_body(context, body) -> st.SearchStrategy:
    """`flatmap_body`: sometimes one leaf of a JSON body becomes hostile text, or NaN (not JSON)."""
    if not isinstance(body, (dict, list)) or not body:
        return st.just(body)
    leaves = st.sampled_from(list(_leaves(body)))
    return st.one_of(  # weights 3 : 1 : 1
        st.just(body),
        st.just(body),
        st.just(body),
        st.tuples(leaves, st.sampled_from(HOSTILE_TEXT)).map(lambda pick: _replace(body, *pick)),
        # requests refuses to encode NaN, so that body goes out as bytes.
        leaves.map(lambda at: json.dumps(_replace(body, at, float("nan"))).encode()),
    )


def error_envelope(ctx, response, case) -> None:
    """4xx bodies are `{"error": {"code": str, "message": str, ...}}`."""
    if not 400 <= response.status_code < 500:
        return
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} body is not JSON: {response.content[:200]!r}") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict), f"{response.status_code} body is not the error envelope: {body!r}"[:500]
    assert isinstance(error.get("code"), str) and error["code"], f"error.code missing: {body!r}"[:500]
    assert isinstance(error.get("message"), str) and error["message"], f"error.message missing: {body!r}"[:500]


def success_envelope(ctx, response, case) -> None:
    """2xx bodies of /api/v1 routes are `{"data": ...}`."""
    if not 200 <= response.status_code < 300 or not case.operation.path.startswith("/api/v1/"):
        return
    body = json.loads(response.content)
    assert isinstance(body, dict) and "data" in body, f"{response.status_code} body lacks data: {body!r}"[:500]


@pytest.fixture
def live_schema(mash_server):
    KNOWN.clear()
    KNOWN.update(seed(mash_server))
    schema = schemathesis.openapi.from_url(f"{mash_server.url}/api/v1/schema/?format=json",
                                           headers=mash_server.headers, timeout=30)
    schema.hooks.register_hook_with_name(with_known_ids, "flatmap_path_parameters")
    schema.hooks.register_hook_with_name(with_hostile_query, "flatmap_query")
    schema.hooks.register_hook_with_name(with_hostile_body, "flatmap_body")
    return schema.exclude(path_regex=SSE_PATHS)


def fuzz(operation, server, statuses: Counter) -> str | None:
    """Run one operation's property test; the failure report, or None."""
    strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    # Hypothesis starts from the simplest draw (the first element): with the key.
    @given(case=strategy, with_key=st.sampled_from([True] * 9 + [False]))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink], verbosity=Verbosity.quiet)
    def run(case, with_key):
        headers = server.headers if with_key else {}
        response = case.call_and_validate(base_url=server.url, headers=headers, timeout=30,
                                          checks=[not_a_server_error, error_envelope, success_envelope])
        statuses[response.status_code] += 1

    try:
        run()
    except FailureGroup as exc:  # what the checks found (schemathesis formats it with a curl line)
        return f"{operation.method.upper()} {operation.path}:\n{exc}"
    except (Exception, BaseExceptionGroup):  # anything else: several failures at once, transport errors, bugs here
        return f"{operation.method.upper()} {operation.path}:\n{traceback.format_exc()[-3000:]}"
    return None


def test_api_contract(live_schema, mash_server):
    operations, failures, statuses = [], [], {}
    for result in live_schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"
        operations.append(label)
        statuses[label] = Counter()
        if (failure := fuzz(operation, mash_server, statuses[label])) is not None:
            failures.append(failure)
    for label, counts in statuses.items():
        print(f"{label}: {dict(sorted(counts.items()))}")
    assert len(operations) >= 30, operations
    assert "GET /api/v1/telemetry/events" in operations
    assert not [op for op in operations if re.search(SSE_PATHS, op)]
    assert not failures, f"{len(failures)} of {len(operations)} operations failed:\n\n" + "\n\n".join(failures)

    def reached(pattern: str, status: int) -> int:
        """Responses with `status` summed over the spellings (`agent`/`agents`, ...) of one route."""
        return sum(counts[status] for label, counts in statuses.items() if re.fullmatch(pattern, label))

    # The aimed ids reach real rows, so the fuzzing is not all 404s and 4xx: requests get
    # submitted, and most routes about a request or a session answer 2xx at least once.
    assert reached(r"POST /api/v1/agents?/\{agent_id\}/requests?", 202) > 0, statuses
    aimed_routes = [label for label in statuses if re.search(r"\{(request_id|session_id)\}", label)]
    answered = [label for label in aimed_routes if any(200 <= code < 300 for code in statuses[label])]
    assert len(answered) >= len(aimed_routes) // 2, sorted(set(aimed_routes) - set(answered))


def test_schema_is_served_as_json_behind_the_key(mash_server):
    with mash_server.client() as http:
        response = http.get("/api/v1/schema/", params={"format": "json"})
        anonymous = http.get("/api/v1/schema/", params={"format": "json"}, headers={"Authorization": ""})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/vnd.oai.openapi+json")
    paths = response.json()["paths"]
    assert "/api/v1/agent/{agent_id}/request" in paths and "/api/v1/agents/{agent_id}/requests" in paths
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "UNAUTHORIZED"
