"""Service functions: what the API, the CLI and the admin call to drive requests.

Each raises a `ServiceError` carrying the wire error code and HTTP status, so views
stay thin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from mash_core.errors import ConfigError
from mash_core.structured import normalize_schema
from mash_runtime import tokens
from mash_runtime.db import insert_request_in_one_statement, insert_rows, select_rows
from mash_runtime.dbfaults import once_more_if_dropped
from mash_runtime.errors import Conflict, Gone, NotFound, ServiceError
from mash_runtime.events import append_event, append_events, base_payload
from mash_runtime.host_sync import forget_agent_rows, get_agent_row
from mash_runtime.models import Agent, IdempotencyKey, Interaction, Request, RuntimeEvent, Session
from mash_runtime.queue import enqueue_request_on_commit
from mash_runtime.run import lifecycle
from mash_runtime.storable import UnstorableValue, check_storable


# -- lookups ------------------------------------------------------------------------------


def _request_pk(request_id) -> uuid.UUID:
    try:
        return uuid.UUID(str(request_id).strip())
    except ValueError:
        raise NotFound(f"Request '{request_id}' not found", code="REQUEST_NOT_FOUND") from None


def _check_owner(request_id, found_agent_id: str | None, agent_id: str | None) -> None:
    if found_agent_id is None:
        raise NotFound(f"Request '{request_id}' not found", code="REQUEST_NOT_FOUND")
    if agent_id is not None and found_agent_id != agent_id:
        raise NotFound(f"Request '{request_id}' not found for agent '{agent_id}'", code="REQUEST_NOT_FOUND")


def stream_target(request_id, agent_id: str) -> uuid.UUID:
    """The pk of `agent_id`'s request `request_id`, or NotFound: the one check a stream needs."""
    pk = _request_pk(request_id)
    found = select_rows(Request, {"pk": pk}, related=("agent",), only=("agent",))  # not its message or response
    _check_owner(request_id, found[0].agent.agent_id if found else None, agent_id)
    return pk


def get_request(request_id, agent_id: str | None = None) -> Request:
    found = select_rows(Request, {"pk": _request_pk(request_id)}, related=("agent", "session"))
    req = found[0] if found else None
    _check_owner(request_id, req.agent.agent_id if req is not None else None, agent_id)
    return req


# -- submit -------------------------------------------------------------------------------


def subagent_session_id(primary_session_id: str, agent_id: str) -> str:
    """Stable session of a subagent for one primary session: `subagent:<id>:<24 hex>`."""
    digest = hashlib.sha256(f"{primary_session_id}\x00{agent_id}".encode()).hexdigest()[:24]
    return f"subagent:{agent_id}:{digest}"


def create_request(
    agent: Agent,
    message: str,
    *,
    session_id: str | None = None,
    structured_output: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    parent: Request | None = None,
    workflow_run=None,
    request_id: uuid.UUID | None = None,
    idempotency: tuple[str, str] | None = None,
) -> Request:
    """Insert the request and its first event, all or nothing; the caller owns the enqueue
    (after commit: `enqueue_request_on_commit`), and the transaction if there is one.

    `idempotency` is a client's (key, body hash): its `IdempotencyKey` row is written with the
    request, and a key the agent has already (the unique constraint) raises IntegrityError with
    nothing written (`submit_request` answers from the stored request then)."""
    session_key = session_id or Session.default_session_id(agent.agent_id)
    req = Request(
        id=request_id or uuid.uuid4(),
        agent=agent,
        session=Session(agent=agent, session_id=session_key),  # its seq is taken below
        parent=parent,
        workflow_run=workflow_run,
        message=message,
        structured_output=structured_output,
        metadata=metadata or {},
        last_seq=1,  # the seq of "accepted", below: reserved with the row itself
    )
    # No doorbell: nobody can follow a request before its id is returned, and tails pick the
    # event up with the next ring (the claim's, a few ms later) or their own poll.
    accepted = ("request.accepted", {**base_payload(req), "status": "accepted"}, "accepted", None, "")
    along = () if idempotency is None else (
        IdempotencyKey(agent=agent, key=idempotency[0], body_hash=idempotency[1], request=req),)
    if insert_request_in_one_statement(req, RuntimeEvent._new(req, 1, accepted), along):
        return req
    # With a key, a savepoint inside a caller's transaction: a key taken already fails this block
    # alone, and the caller can still read who took it.
    with transaction.atomic(savepoint=bool(along)):
        req.session = Session.take_next_request_seq(agent, session_key)
        req.session_seq = req.session.last_request_seq
        insert_rows([req])
        req.last_seq = 0  # as before the reservation: the append takes it
        req._event_keys = set()  # a new stream: appends can skip the dedupe read (RuntimeEvent.append_many)
        append_events(req, [accepted], ring=False, reserved_to=1)
        if along:
            insert_rows(list(along))
    return req


# Printable ASCII, as the Idempotency-Key header's draft standard (and every client's UUIDs) has it.
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]+")


def clean_idempotency_key(value: Any) -> str | None:
    """The `Idempotency-Key` a client sent (None: it sent none), or a 400 INVALID_IDEMPOTENCY_KEY."""
    if value is None:
        return None
    key = value.strip() if isinstance(value, str) else ""
    if not key or len(key) > IdempotencyKey.MAX_LENGTH or not _IDEMPOTENCY_KEY.fullmatch(key):
        msg = f"must be 1 to {IdempotencyKey.MAX_LENGTH} printable ASCII characters"
        raise ServiceError(f"Idempotency-Key {msg}", code="INVALID_IDEMPOTENCY_KEY",
                           details={"errors": [{"loc": ["header", "Idempotency-Key"], "msg": msg, "type": "value_error"}]})
    return key


def submit_fingerprint(message: str, session_id: str | None, structured_output: Any, metadata: Any) -> str:
    """sha256 of a submit's body as the service reads it (keys sorted, blanks as the service
    treats them): a retry of the same submit has the same one whatever its JSON spacing."""
    body = {"message": message, "session_id": session_id, "structured_output": structured_output,
            "metadata": metadata or None}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _accepted(request_id, agent_id: str, session_id: str, *, replayed: bool = False) -> dict[str, Any]:
    data = {"request_id": str(request_id), "agent_id": agent_id, "session_id": session_id, "status": "accepted"}
    if replayed:
        data["replayed"] = True
    return data


_INSERT_AGAIN = "insert again"


def _stored_submit(agent: Agent, request_id: uuid.UUID, key: str | None, fingerprint: str) -> dict[str, Any] | str | None:
    """After an insert hit a unique constraint: the answer the stored request gives; None when
    nothing stored explains the conflict; `_INSERT_AGAIN` when the key that did had expired
    (it is gone now)."""
    if key is not None:
        found = (IdempotencyKey.objects.select_related("request__session").filter(agent=agent, key=key).first())
        if found is not None and found.request_id != request_id:
            if found.created_at < timezone.now() - IdempotencyKey.KEEP:
                # Expired, the sweeper has not come by yet: forget it (unless someone just did) and insert again.
                IdempotencyKey.objects.filter(pk=found.pk, created_at=found.created_at).delete()
                return _INSERT_AGAIN
            if found.body_hash != fingerprint:
                raise ServiceError(
                    "Idempotency-Key was used for another request with a different body; use a new key for a new "
                    "request", code="IDEMPOTENCY_KEY_REUSED", status=422, details={"request_id": str(found.request_id)})
            if found.request.status == Request.Status.ACCEPTED:
                # Maybe never enqueued (its submit died between commit and enqueue, answering
                # 503): a second delivery is harmless, a lost one waits for the sweeper.
                enqueue_request_on_commit(found.request_id)
            return _accepted(found.request_id, agent.agent_id, found.request.session.session_id, replayed=True)
    # Our own first try, committed though its connection dropped before it could say so.
    mine = Request.objects.select_related("session").filter(pk=request_id).first()
    if mine is None:
        return None
    enqueue_request_on_commit(mine.pk)  # that try never got as far as its enqueue
    return _accepted(mine.pk, agent.agent_id, mine.session.session_id)


def _submit_once(agent_id: str, message: str, session_id: str | None, schema, metadata, request_id: uuid.UUID,
                 key: str | None, fingerprint: str) -> dict[str, Any]:
    agent = get_agent_row(agent_id)
    idempotency = (key, fingerprint) if key is not None else None
    for attempt in range(2):  # again only after an expired key was forgotten or the agent row was read again
        try:
            req = create_request(agent, message, session_id=session_id, structured_output=schema, metadata=metadata,
                                 request_id=request_id, idempotency=idempotency)
        except IntegrityError:
            forget_agent_rows()  # the agent's row may be gone (get_agent_row's copy): read it again
            stored = _stored_submit(agent, request_id, key, fingerprint)
            if attempt == 0 and (stored is _INSERT_AGAIN or stored is None):
                agent = get_agent_row(agent_id)
                continue
            if not isinstance(stored, dict):
                raise
            return stored
        enqueue_request_on_commit(req.pk)
        return _accepted(req.pk, agent.agent_id, req.session.session_id)
    raise AssertionError("unreachable: the second insert returns or raises")


def submit_request(
    agent_id: str,
    message: str,
    session_id: str | None = None,
    structured_output: Any = None,
    metadata: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    stream_tokens: bool = False,
) -> dict[str, Any]:
    """Store a new request and enqueue it: `{request_id, agent_id, session_id, status}`.
    `stream_tokens`: the client will follow its token deltas (mash_runtime.tokens).

    With `idempotency_key` (the `Idempotency-Key` header), a submit the agent already took
    under that key within `IdempotencyKey.KEEP` answers with that request (`replayed: True`)
    instead of making another; the same key with a different body is 422
    IDEMPOTENCY_KEY_REUSED.
    """
    # `message` (stripped, not blank) and `session_id` (stripped, None for the default) come
    # checked by the caller: the API's SubmitRequestSerializer, or code of ours.
    agent_id = (agent_id or "").strip()
    schema = None
    if structured_output is not None:
        try:
            schema = normalize_schema(structured_output)
        except ConfigError as exc:
            raise ServiceError(str(exc), code="INVALID_STRUCTURED_OUTPUT") from None
    key = clean_idempotency_key(idempotency_key)
    fingerprint = submit_fingerprint(message, session_id, structured_output, metadata) if key is not None else ""
    # A connection that drops under the submit is tried once more, on a live one. That is safe
    # although the first try's outcome is unknown when the connection died during its COMMIT
    # (or during the one statement that commits on its own): both tries insert the same
    # request id (chosen here, once) and the same key, so the second can never make a second
    # request. If the first committed, the second's insert hits the primary key or the key's
    # unique constraint and answers with the stored request (`_stored_submit`, which also
    # enqueues it: the first never got that far). If it did not, nothing of it exists (one
    # statement, or one transaction) and the second stores it afresh. A first try still being
    # decided by the server cannot fool the second either: an insert of a duplicate key waits
    # for the transaction holding it to end, then fails or goes ahead. Two tries at most;
    # then the error goes to the caller (the API answers 503 DATABASE_UNAVAILABLE, retryable;
    # the client's retry with the same Idempotency-Key is safe for the same reasons).
    request_id = uuid.uuid4()
    if stream_tokens:
        # Before it exists: its first model call may start before the client's stream opens.
        tokens.mark_listening_sync(request_id)
    return once_more_if_dropped(
        lambda: _submit_once(agent_id, message, session_id, schema, metadata, request_id, key, fingerprint), "submit")


# -- status, cancel, resume ---------------------------------------------------------------

API_STATUS = {
    Request.Status.ACCEPTED: "queued",
    Request.Status.WAITING: "queued",
    Request.Status.RUNNING: "pending",
    Request.Status.AWAITING_INPUT: "waiting_input",
    Request.Status.AWAITING_SUBAGENT: "pending",
    Request.Status.COMPLETED: "completed",
    Request.Status.FAILED: "failed",
    Request.Status.CANCELLED: "cancelled",
}


def get_request_status(request_id, agent_id: str | None = None) -> dict[str, Any]:
    req = get_request(request_id, agent_id)
    data: dict[str, Any] = {
        "request_id": str(req.pk),
        "workflow_id": str(req.pk),
        "status": API_STATUS[req.status],
        "recovery_attempts": req.recovery_attempts,
    }
    if req.error:
        data["error"] = req.error
        data["error_code"] = req.error_code
    return data


def cancel_request(request_id, agent_id: str | None = None) -> dict[str, Any]:
    req = get_request(request_id, agent_id)
    if req.is_terminal:
        return {"request_id": str(req.pk), "status": API_STATUS[req.status]}
    not_running = (Request.Status.ACCEPTED, Request.Status.WAITING, *Request.PARKED)
    if lifecycle.finish(req, Request.Status.CANCELLED, error="Request cancelled", error_code="cancelled",
                        only_from=not_running):
        _cancel_children(req)
        return {"request_id": str(req.pk), "status": "cancelled"}
    # Running somewhere: its worker's heartbeat reads this flag and interrupts the LLM or tool call.
    lifecycle.request_cancel(req)
    _cancel_children(req)
    req.refresh_from_db()
    return {"request_id": str(req.pk), "status": "cancelled" if req.is_terminal else "cancelling"}


def _cancel_children(req: Request) -> None:
    for child_id in Request.objects.filter(parent=req).exclude(status__in=Request.TERMINAL).values_list("pk", flat=True):
        cancel_request(child_id)


def resume_request(request_id, agent_id: str | None = None) -> dict[str, Any]:
    req = get_request(request_id, agent_id)
    previous = API_STATUS[req.status]
    if req.status not in (Request.Status.FAILED, Request.Status.CANCELLED):
        return {"request_id": str(req.pk), "workflow_id": str(req.pk), "status": previous,
                "message": f"Request is {previous}; nothing to resume"}
    with transaction.atomic():
        if not lifecycle.reopen(req):
            # Someone else resumed or changed it between our read and this update.
            req.refresh_from_db(fields=["status"])
            current = API_STATUS[req.status]
            return {"request_id": str(req.pk), "workflow_id": str(req.pk), "status": current,
                    "message": f"Request is {current}; nothing to resume"}
        # Questions its end cut short are asked again by the resumed run.
        Interaction.objects.filter(request=req, status=Interaction.Status.CANCELLED).delete()
        enqueue_request_on_commit(req.pk)
    return {"request_id": str(req.pk), "workflow_id": str(req.pk), "status": "resumed", "previous_status": previous,
            "message": "Request resumed from its last checkpoint"}


# -- interactions -------------------------------------------------------------------------


def _validate_answer(itr: Interaction, response: Any) -> Any:
    options = (itr.schema or {}).get("options") or []
    if itr.type == Interaction.Type.APPROVAL:
        if not isinstance(response, str) or response.strip().lower() not in options:
            raise ServiceError(f"approval response must be one of {', '.join(options)}", code="INVALID_INTERACTION_RESPONSE")
        return response.strip().lower()
    if itr.type == Interaction.Type.CHOICE:
        values = [response] if isinstance(response, str) else response
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ServiceError("choice response must be a list of options", code="INVALID_INTERACTION_RESPONSE")
        unknown = [v for v in values if v not in options]
        if unknown:
            raise ServiceError(f"unknown option(s): {', '.join(unknown)}", code="INVALID_INTERACTION_RESPONSE")
        return values
    if not isinstance(response, str):
        raise ServiceError("info response must be a string", code="INVALID_INTERACTION_RESPONSE")
    return response


def answer_interaction(request_id, interaction_id: str, response: Any, agent_id: str | None = None) -> dict[str, Any]:
    req = get_request(request_id, agent_id)
    interaction_id = str(interaction_id or "").strip()
    # A subagent's question is surfaced on its parent's stream, so the parent's route answers it too.
    itr = (
        Interaction.objects.select_related("request", "request__agent", "request__session")
        .filter(interaction_id=interaction_id)
        .filter(request__in=_request_family(req))
        .first()
    )
    if itr is None:
        raise NotFound(f"Interaction '{interaction_id}' not found", code="INTERACTION_NOT_FOUND")
    if itr.status == Interaction.Status.ANSWERED:
        raise Conflict(f"Interaction '{interaction_id}' was already answered", code="INTERACTION_ALREADY_ANSWERED")
    if itr.status == Interaction.Status.CANCELLED:
        raise Gone(f"Interaction '{interaction_id}' ended with its request", code="INTERACTION_CANCELLED")
    if itr.status == Interaction.Status.TIMED_OUT or itr.expires_at <= timezone.now():
        if itr.status == Interaction.Status.PENDING:
            time_out_interaction(itr)
        raise Gone(f"Interaction '{interaction_id}' timed out", code="INTERACTION_TIMED_OUT")
    try:
        check_storable(response, "response")
    except UnstorableValue as exc:
        raise ServiceError(str(exc), code="VALIDATION_ERROR", status=422) from None
    value = _validate_answer(itr, response)
    resolved = _resolve_interaction(itr, value, Interaction.Status.ANSWERED)
    if not resolved:
        raise Conflict(f"Interaction '{interaction_id}' was already answered", code="INTERACTION_ALREADY_ANSWERED")
    return {"ok": True, "interaction_id": itr.interaction_id}


def _request_family(req: Request) -> list:
    ids = [req.pk]
    frontier = [req.pk]
    while frontier:
        frontier = list(Request.objects.filter(parent_id__in=frontier).values_list("pk", flat=True))
        ids.extend(frontier)
    return ids


def _resolve_interaction(itr: Interaction, value: Any, status: str) -> bool:
    with transaction.atomic():
        changed = Interaction.objects.filter(pk=itr.pk, status=Interaction.Status.PENDING).update(
            status=status, response=value, answered_at=timezone.now()
        )
        if not changed:
            return False
        req = itr.request
        payload = {**base_payload(req), "interaction_id": itr.interaction_id, "response": value}
        if status == Interaction.Status.TIMED_OUT:
            payload["timed_out"] = True
        append_event(req, "request.interaction.ack", payload, dedupe_key=f"{itr.step_key}:ack:{req.run_attempt}")
        enqueue_request_on_commit(req.pk)
    return True


def time_out_interaction(itr: Interaction) -> bool:
    return _resolve_interaction(itr, itr.default_response, Interaction.Status.TIMED_OUT)


def expire_interactions(now: dt.datetime | None = None) -> int:
    now = now or timezone.now()
    count = 0
    for itr in Interaction.objects.select_related("request", "request__agent", "request__session").filter(
        status=Interaction.Status.PENDING, expires_at__lte=now
    ):
        count += time_out_interaction(itr)
    return count
