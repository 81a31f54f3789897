"""The one module with SQL written out by hand.

The ORM is the default everywhere else. A statement is here only when the ORM cannot say it
(PostgreSQL's LISTEN/NOTIFY, full-text search with FTS5 and ts_rank, the planner's row
estimate) or when writing it out was measured to pay (bench/README.md names each gain); each
function's docstring gives the ORM equivalent or says there is none. tests/runtime/
test_db_statements.py holds each against its ORM equivalent; the search statements are
tested through memory search (tests/runtime/test_memory_search.py), on both databases.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, models

# NOTIFY payloads are limited to 8,000 bytes by PostgreSQL; leave room for the channel name.
NOTIFY_LIMIT = 7900


# -- the hot statements and the helpers that write them ----------------------------------


def bound_cursor():
    """A cursor for the hot statements this project writes out in SQL (inserts of events
    and checkpoints, seq and lease updates).

    On PostgreSQL it binds parameters on the server instead of quoting them into the text
    in the client, as Django's ORM does: these statements have the same text every time,
    so psycopg prepares each after a few runs and the server stops parsing and planning
    them, and a batch's parameters skip the client's literal quoting. Elsewhere it is the
    ordinary cursor.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql":
        return conn.cursor()
    from django.db.backends.postgresql.base import ServerBindingCursor

    conn.close_if_health_check_failed()
    conn.ensure_connection()
    with conn.wrap_database_errors:
        return conn._prepare_cursor(ServerBindingCursor(conn.connection))


def mark_stored(objs, alias: str = DEFAULT_DB_ALIAS) -> None:
    """Mark objects written by a statement here as saved rows of `alias` (what `save()` sets)."""
    for obj in objs:
        obj._state.adding, obj._state.db = False, alias


def model_field(model: type[models.Model], name: str) -> models.Field:
    """A field of `model` by name, `pk` included (the written-out SQL below names fields so)."""
    meta = model._meta
    return meta.pk if name == "pk" else meta.get_field(name)


def column(model: type[models.Model], name: str, conn) -> str:
    """The quoted column of `model`'s field `name`."""
    return conn.ops.quote_name(model_field(model, name).column)


def update_row(model: type[models.Model], where: dict[str, Any], *, values: dict[str, Any] | None = None,
               add: dict[str, int] | None = None, returning: tuple[str, ...] = ()):
    """`UPDATE model SET field = value, counter = counter + n WHERE field = value AND ...`
    (`values`, `add`, `where`) in one statement; returns the `returning` fields' new values (None when no row
    matched), or the number of rows changed when `returning` is empty.

    For the hot single-row updates (seqs, counters, a run's outcome): the ORM's
    `update()` cannot return values, so each of these took a second statement to read
    what it had just written, and compiling the query cost more than running it.
    Values are prepared by their fields, as the ORM prepares them.
    """
    conn = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy is a thread-local lookup
    assignments, params = [], []
    for name, value in (values or {}).items():
        assignments.append(f"{column(model, name, conn)} = %s")
        params.append(model_field(model, name).get_db_prep_save(value, conn))
    for name, amount in (add or {}).items():
        col = column(model, name, conn)
        assignments.append(f"{col} = {col} + %s")
        params.append(int(amount))
    conditions = []
    for name, value in where.items():
        conditions.append(f"{column(model, name, conn)} = %s")
        params.append(model_field(model, name).get_db_prep_value(value, conn))
    sql = (f"UPDATE {conn.ops.quote_name(model._meta.db_table)} SET {', '.join(assignments)} "
           f"WHERE {' AND '.join(conditions)}")
    if returning:
        sql += " RETURNING " + ", ".join(column(model, name, conn) for name in returning)
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if returning else cursor.rowcount


_selects: dict[tuple, tuple[str, list]] = {}


def _select(model: type[models.Model], where: tuple[str, ...], related: tuple[str, ...], order_by: str | None,
            limit: bool, only: tuple[str, ...] | None, conn) -> tuple[str, list]:
    """`select_rows`' statement text for one shape of query, and how to build each row's
    objects: per model, its fields' attnames and converters and the foreign key it hangs on."""
    key = (model, where, related, order_by, limit, only, conn.vendor)
    if key in _selects:
        return _selects[key]
    quote = conn.ops.quote_name
    meta = model._meta
    parts = [(model, "t0", None)]
    joins = []
    for number, name in enumerate(related, 1):
        fk = meta.get_field(name)
        alias = f"t{number}"
        joins.append(f" {'LEFT' if fk.null else 'INNER'} JOIN {quote(fk.related_model._meta.db_table)} {alias} "
                     f"ON {alias}.{quote(fk.target_field.column)} = t0.{quote(fk.column)}")
        parts.append((fk.related_model, alias, fk))
    columns, plan = _read_plan(parts, only, conn)
    conditions = []
    for name in where:
        field_name, _, lookup = name.partition("__")
        conditions.append(f"t0.{column(model, field_name, conn)} {'>' if lookup == 'gt' else '='} %s")
    sql = f"SELECT {', '.join(columns)} FROM {quote(meta.db_table)} t0{''.join(joins)}"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if order_by:
        sql += f" ORDER BY t0.{column(model, order_by, conn)}"
    if limit:
        sql += " LIMIT %s"
    _selects[key] = (sql, plan)
    return _selects[key]


def select_rows(model: type[models.Model], where: dict[str, Any], *, related: tuple[str, ...] = (),
                order_by: str | None = None, limit: int | None = None, only: tuple[str, ...] | None = None) -> list:
    """`model.objects.select_related(*related).filter(**where).order_by(order_by)[:limit]`
    (`.only(*only)` too, for `model`'s own fields) for the hot reads (a claim, a stream's
    first page, a submit's agent): `where` keys are field names, compared with `=`, or
    `field__gt`.

    The ORM compiles a query on every call, which cost more than running it; this text is
    built once per shape and bound on the server, so PostgreSQL prepares it too
    (`bound_cursor`). Values are read through the same converters the ORM applies, and the
    objects are made with `from_db`, as the ORM makes them.
    """
    conn = connections[DEFAULT_DB_ALIAS]
    sql, plan = _select(model, tuple(where), tuple(related), order_by, limit is not None, only, conn)
    params = [model_field(model, name.partition("__")[0]).get_db_prep_value(value, conn)
              for name, value in where.items()]
    if limit is not None:
        params.append(int(limit))
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return [_from_row(row, plan, conn) for row in rows]


def _read_plan(parts: list[tuple], only: tuple[str, ...] | None, conn) -> tuple[list[str], list]:
    """The columns to select for `parts` ((model, table alias, the foreign key it hangs on or
    None for the main model)) and how to make objects of them (`_from_row`)."""
    quote = conn.ops.quote_name
    columns, plan = [], []
    for part_model, alias, fk in parts:
        fields = part_model._meta.concrete_fields
        if fk is None and only is not None:  # the rest are deferred, as with QuerySet.only()
            fields = [f for f in fields if f.primary_key or f.name in only]
        converters = []
        for field in fields:
            columns.append(f"{alias}.{quote(field.column)}")
            col = field.get_col(alias)
            # What the ORM's compiler applies to each value it reads (SQLCompiler.get_converters).
            converters.append((col, conn.ops.get_db_converters(col) + col.get_db_converters(conn)))
        plan.append((part_model, [field.attname for field in fields], converters, fk))
    return columns, plan


def _from_row(row, plan: list, conn) -> models.Model:
    """The main object of one row read by `_read_plan`'s columns, its related objects cached on
    it, each made with `from_db` through the ORM's own converters."""
    start, main = 0, None
    for part_model, attnames, converters, fk in plan:
        values = list(row[start:start + len(attnames)])
        start += len(attnames)
        for index, (col, functions) in enumerate(converters):
            for function in functions:
                values[index] = function(values[index], col, conn)
        if fk is None:
            main = part_model.from_db(conn.alias, attnames, values)
        else:
            fk.set_cached_value(main, None if getattr(main, fk.attname) is None
                                 else part_model.from_db(conn.alias, attnames, values))
    return main


_insert_heads: dict[tuple, tuple[list, str]] = {}


def _typed(placeholder: str, field: models.Field, conn) -> str:
    """`placeholder` cast to `field`'s column type, length modifiers dropped as Django does
    (varchar takes any value varchar(n) would)."""
    return f"{placeholder}::{field.db_type(conn).split('(')[0]}"


def _insert_head(model: type[models.Model], vendor: str) -> tuple[list, str]:
    """The fields an INSERT of `model` writes and its text up to the rows (built once)."""
    key = (model, vendor)
    if key not in _insert_heads:
        conn = connections[DEFAULT_DB_ALIAS]
        quote = conn.ops.quote_name
        meta = model._meta
        fields = [f for f in meta.concrete_fields if f is not meta.auto_field]
        head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        if vendor == "postgresql":
            # Arrays go in binary (%b): psycopg's text format escapes every element with a
            # regex in Python, which for JSON payloads cost ten times the binary encoding.
            head += "SELECT * FROM UNNEST(" + ", ".join(_typed("%b", f, conn) + "[]" for f in fields) + ")"
        else:
            head += "VALUES "
        _insert_heads[key] = (fields, head)
    return _insert_heads[key]


def _unnest_insert(objs: list[models.Model], conn) -> tuple[str, list]:
    """PostgreSQL: an INSERT of `objs` as one array per column, and its parameters."""
    fields, head = _insert_head(objs[0].__class__, conn.vendor)
    rows = [[f.get_db_prep_save(f.pre_save(obj, True), conn) for f in fields] for obj in objs]
    return head, [list(column) for column in zip(*rows)]


def insert_rows(objs: list[models.Model], *, ignore_conflicts: bool = False) -> None:
    """INSERT `objs` (all of one model) in one statement, as `bulk_create` would, and set
    their new pks. Values go through each field's own `pre_save`/`get_db_prep_save`, so
    they are stored exactly as the ORM stores them; only the query compiler is skipped,
    which was most of the cost of the engine's per-step inserts. With `ignore_conflicts`,
    rows that hit a unique constraint are skipped and no pks are set.

    On PostgreSQL the rows travel as one array per column (`UNNEST`, as Django's own
    bulk_create does there): the statement's text is then the same for any number of
    rows, so it is prepared once (`bound_cursor`).
    """
    if not objs:
        return
    conn = connections[DEFAULT_DB_ALIAS]  # once: each use of the `connection` proxy is a thread-local lookup
    meta = objs[0]._meta
    fields, head = _insert_head(objs[0].__class__, conn.vendor)
    size = max(1, conn.ops.bulk_batch_size(fields, objs))  # SQLite caps a statement's parameters
    if len(objs) > size:
        for start in range(0, len(objs), size):
            insert_rows(objs[start:start + size], ignore_conflicts=ignore_conflicts)
        return
    if conn.vendor == "postgresql":
        sql, params = _unnest_insert(objs, conn)
    else:
        row = "(" + ", ".join(["%s"] * len(fields)) + ")"
        sql = head + ", ".join([row] * len(objs))
        params = [f.get_db_prep_save(f.pre_save(obj, True), conn) for obj in objs for f in fields]
    quote = conn.ops.quote_name
    if ignore_conflicts:
        sql += " ON CONFLICT DO NOTHING"
    elif meta.auto_field is not None:
        sql += f" RETURNING {quote(meta.auto_field.column)}"
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        if not ignore_conflicts and meta.auto_field is not None:
            for obj, (pk,) in zip(objs, cursor.fetchall()):
                obj.pk = pk
    mark_stored(objs, conn.alias)


_new_request_texts: dict[tuple, str] = {}


def insert_request_in_one_statement(req: models.Model, event: models.Model,
                                    along: tuple[models.Model, ...] = ()) -> bool:
    """A new request as one statement, committed on its own: its session's next seq taken
    (`Session.take_next_request_seq`), `req` (a Request) inserted with that seq and its first
    event (`event`, seq 1: `req.last_seq` is 1 already) inserted; five round trips (BEGIN, three
    statements, COMMIT) become one. `along` are rows of other models that belong with the
    request (its `IdempotencyKey`), inserted in the same statement (their pks are not read
    back); a unique constraint they break fails the whole statement (IntegrityError), so
    nothing of the request is written either. ORM equivalent: `Session.take_next_request_seq`,
    `req.save()`, `event.save()` and `obj.save()` for each of `along` in one transaction.

    `req.session` is the session to take the seq from, by agent and session id; it may be
    unsaved, and comes back as the stored row's. Only on PostgreSQL, outside a transaction,
    and for a session that exists: False means nothing was written, take the ordinary path.
    """
    from django.utils import timezone

    # The models from the rows: this module imports no model (models.py imports it).
    Request, RuntimeEvent = type(req), type(event)
    Session = Request._meta.get_field("session").related_model
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql" or conn.in_atomic_block:
        return False
    quote = conn.ops.quote_name
    fields = Request._meta.concrete_fields
    from_session = {"session_id": "s.id", "session_seq": "s.last_request_seq"}
    text_key = tuple(type(obj) for obj in along)
    if text_key not in _new_request_texts:
        seq = column(Session, "last_request_seq", conn)
        events_insert = _insert_head(RuntimeEvent, conn.vendor)[1]
        # Data-modifying CTEs run whether or not the final SELECT reads them.
        along_inserts = "".join(f", a{number} AS ({_insert_head(model, conn.vendor)[1]} WHERE EXISTS (SELECT 1 FROM r))"
                                for number, model in enumerate(text_key))
        _new_request_texts[text_key] = (
            f"WITH s AS (UPDATE {quote(Session._meta.db_table)} SET {column(Session, 'last_activity_at', conn)} = %s, "
            f"{seq} = {seq} + 1 WHERE {column(Session, 'agent', conn)} = %s "
            f"AND {column(Session, 'session_id', conn)} = %s "
            f"RETURNING {column(Session, 'pk', conn)} AS id, {seq} AS last_request_seq), "
            f"r AS (INSERT INTO {quote(Request._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
            f"SELECT {', '.join(from_session.get(f.attname) or _typed('%s', f, conn) for f in fields)}"
            f" FROM s RETURNING 1), "
            f"e AS ({events_insert} WHERE EXISTS (SELECT 1 FROM r) RETURNING {column(RuntimeEvent, 'pk', conn)} AS id)"
            f"{along_inserts} "
            f"SELECT s.id, s.last_request_seq, e.id FROM s, e")
    now = timezone.now()
    params: list[Any] = [now, req.agent_id, req.session.session_id]
    params += [f.get_db_prep_save(f.pre_save(req, True), conn) for f in fields if f.attname not in from_session]
    params += _unnest_insert([event], conn)[1]
    for obj in along:
        params += _unnest_insert([obj], conn)[1]
    with bound_cursor() as cursor:
        cursor.execute(_new_request_texts[text_key], params)
        row = cursor.fetchone()
    if row is None:
        return False
    session_pk, session_seq, event.pk = row
    req.session = Session.with_seq_taken(req.agent, req.session.session_id, session_pk, session_seq, now)
    req.session_seq = session_seq
    mark_stored((req, event, *along), conn.alias)
    req._event_keys = {event.dedupe_key} if event.dedupe_key else set()
    return True


# -- appends and claims ---------------------------------------------------------------------


def append_if_last_seq(request: models.Model, events: list[models.Model], along: list[models.Model]) -> list[int]:
    """`RuntimeEvent.append_in_one_statement`'s statement: the request's last_seq advanced by
    len(events) if it is still `request.last_seq`, `along` inserted (conflicts skipped) and
    the events inserted, all or nothing; returns the events' new ids ([] when the seq had
    moved: nothing was written). ORM equivalent: `Request.objects.filter(pk=..,
    last_seq=..).update(last_seq=F("last_seq") + n)`, then `bulk_create(along,
    ignore_conflicts=True)` and `bulk_create(events)` in one transaction: five round trips."""
    Request = type(request)
    conn = connections[DEFAULT_DB_ALIAS]
    quote = conn.ops.quote_name
    seq_column, pk_column = column(Request, "last_seq", conn), column(Request, "pk", conn)
    sql = (f"WITH reserved AS (UPDATE {quote(Request._meta.db_table)} SET {seq_column} = {seq_column} + %s "
           f"WHERE {pk_column} = %s AND {seq_column} = %s RETURNING 1)")
    params: list[Any] = [len(events), Request._meta.pk.get_db_prep_value(request.pk, conn), request.last_seq]
    if along:
        head, row_params = _unnest_insert(list(along), conn)
        sql += f", along AS ({head} WHERE EXISTS (SELECT 1 FROM reserved) ON CONFLICT DO NOTHING)"
        params += row_params
    head, row_params = _unnest_insert(events, conn)
    sql += f" {head} WHERE EXISTS (SELECT 1 FROM reserved) RETURNING {column(type(events[0]), 'pk', conn)}"
    params += row_params
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        return [pk for (pk,) in cursor.fetchall()]


def take_lease(request_model: type[models.Model], request_id, owner: str, now, lease_seconds: int) -> int | None:
    """The claim's UPDATE: the request not finished, its lease free or expired, nothing
    unfinished earlier in its session; it becomes running under `owner`'s lease and reserves
    the seq of the `request.started` event the claim appends. Returns last_seq after that
    (None when it did not match). ORM equivalent: `filter(pk=.., ~Q(status__in=TERMINAL),
    Q(lease_expires_at=None) | Q(lease_expires_at__lt=now), ~Exists(earlier unfinished))
    .update(..., last_seq=F("last_seq") + 1)` and a second query for last_seq; the ORM spent
    longer compiling it than the database running it, and it runs once per task."""
    conn = connections[DEFAULT_DB_ALIAS]
    sql = _lease_update(request_model, conn) + f" RETURNING {column(request_model, 'last_seq', conn)}"
    with bound_cursor() as cursor:
        cursor.execute(sql, _lease_params(request_model, conn, request_id, owner, now, lease_seconds))
        row = cursor.fetchone()
    return row[0] if row is not None else None


def _lease_update(Request: type[models.Model], conn, also: str = "") -> str:
    """`take_lease`'s UPDATE up to its RETURNING, with the conditions `also` (SQL) added;
    its parameters are `_lease_params`' (then those of `also`)."""
    table = conn.ops.quote_name(Request._meta.db_table)

    def col(name: str) -> str:
        return column(Request, name, conn)

    terminal = ", ".join(["%s"] * len(Request.TERMINAL))
    return (
        f"UPDATE {table} SET {col('status')} = %s, {col('lease_owner')} = %s, {col('lease_expires_at')} = %s, "
        f"{col('started_at')} = COALESCE({col('started_at')}, %s), {col('last_seq')} = {col('last_seq')} + 1 "
        f"WHERE {col('id')} = %s AND {col('status')} NOT IN ({terminal}) "
        f"AND ({col('lease_expires_at')} IS NULL OR {col('lease_expires_at')} < %s) "
        f"AND NOT EXISTS (SELECT 1 FROM {table} AS earlier WHERE earlier.{col('session')} = {table}.{col('session')} "
        f"AND earlier.{col('session_seq')} < {table}.{col('session_seq')} AND earlier.{col('status')} NOT IN ({terminal}))"
        + (f" AND {also}" if also else "")
    )


def _lease_params(Request: type[models.Model], conn, request_id, owner: str, now, lease_seconds: int) -> list:
    def prep(name: str, value):
        return model_field(Request, name).get_db_prep_value(value, conn)

    return [Request.Status.RUNNING, owner, prep("lease_expires_at", now + timedelta(seconds=lease_seconds)),
            prep("started_at", now), prep("id", request_id), *Request.TERMINAL, prep("lease_expires_at", now),
            *Request.TERMINAL]


_first_start_texts: dict[tuple, tuple[str, list, list[str]]] = {}


def claim_first_start(request_model: type[models.Model], event_model: type[models.Model], request_id, owner: str,
                      now, lease_seconds: int, hosted_ids: list[str], created_at: float, reads: list[tuple] = ()):
    """The usual claim as one statement, committed on its own: `take_lease`'s UPDATE for a
    request never started before, not asked to cancel, of an agent in `hosted_ids`; the
    request read back with its agent and session; and its `request.started` event inserted at
    the seq the UPDATE reserved, with `events.base_payload` and status "started" as payload
    (built here by jsonb_build_object, the same keys and values) and `started.<run_attempt>`
    as its dedupe key (nothing of a first start can hold that key yet); not for requests whose
    events are mirrored (a subagent's, a workflow task's). `reads` (statements built below, of
    this request: `history_statement(of_request=)`, `published_skills_statement(of_request=)`)
    travel with it in one pipeline, so the run's reads cost no trip of their own. Returns
    (the request, its agent and session cached on it, the event's id, the rows of each of
    `reads`), or None when the request did not match: nothing was written, and the ordinary
    claim (`lifecycle._claim`) decides why.

    ORM equivalent: lifecycle._claim's transaction (`take_lease`, `select_rows(Request,
    related=("agent", "session"))`, `append_events` of the started event): four round trips
    (the UPDATE, the read, the insert, COMMIT) become one, once per run. PostgreSQL only,
    outside a transaction (None elsewhere)."""
    Request, RuntimeEvent = request_model, event_model
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql" or conn.in_atomic_block:
        return None
    meta = Request._meta
    if (Request, RuntimeEvent) not in _first_start_texts:
        quote = conn.ops.quote_name
        agent_fk, session_fk = meta.get_field("agent"), meta.get_field("session")
        Agent, Session = agent_fk.related_model, session_fk.related_model

        def col(name: str) -> str:
            return column(Request, name, conn)

        def typed(model, name: str) -> str:
            return _typed("%s", model_field(model, name), conn)

        parts = [(Request, "t0", None), (Agent, "t1", agent_fk), (Session, "t2", session_fk)]
        columns, plan = _read_plan(parts, None, conn)
        joins = (f"JOIN {quote(Agent._meta.db_table)} t1 ON t1.{column(Agent, 'pk', conn)} = t0.{col('agent')} "
                 f"JOIN {quote(Session._meta.db_table)} t2 ON t2.{column(Session, 'pk', conn)} = t0.{col('session')}")
        agent_key, session_key = f"t1.{column(Agent, 'agent_id', conn)}", f"t2.{column(Session, 'session_id', conn)}"
        # Each column of the event, as the ordinary path's RuntimeEvent._new fills it.
        values = {
            "request_id": f"t0.{col('pk')}", "seq": f"t0.{col('last_seq')}",
            "event_type": typed(RuntimeEvent, "event_type"), "agent_id": agent_key, "session_id": session_key,
            "trace_id": f"t0.{col('trace_id')}", "loop_index": "NULL", "step_key": "''",
            "payload": (f"jsonb_build_object('request_id', t0.{col('pk')}::text, 'agent_id', {agent_key}, "
                        f"'session_id', {session_key}, 'status', 'started')"),
            "dedupe_key": f"'started.' || t0.{col('run_attempt')}::text",
            "created_at": typed(RuntimeEvent, "created_at"),
        }
        fields = [f for f in RuntimeEvent._meta.concrete_fields if f is not RuntimeEvent._meta.auto_field]
        if {f.attname for f in fields} != set(values):  # a new event column must be given a value here
            raise AssertionError(f"claim_first_start does not fill {sorted({f.attname for f in fields} ^ set(values))}")
        # Only a first start, not asked to cancel, of a hosted agent; and not a subagent's or a
        # workflow task's request, whose events are mirrored (events.append_events).
        first_start = (
            f"{col('started_at')} IS NULL AND NOT {col('cancel_requested')} "
            f"AND {col('parent')} IS NULL AND {col('workflow_run')} IS NULL "
            f"AND {col('agent')} IN (SELECT {column(Agent, 'pk', conn)} FROM {quote(Agent._meta.db_table)} "
            f"WHERE {column(Agent, 'agent_id', conn)} = ANY(%s::varchar[]))")
        sql = (
            f"WITH lease AS ({_lease_update(Request, conn, first_start)} RETURNING *), "
            f"started AS (INSERT INTO {quote(RuntimeEvent._meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
            f"SELECT {', '.join(values[f.attname] for f in fields)} FROM lease t0 {joins} "
            f"RETURNING {column(RuntimeEvent, 'pk', conn)} AS id) "
            f"SELECT {', '.join(columns)}, started.id FROM lease t0 {joins} CROSS JOIN started"
        )
        # The event's two parameters, in the order the fields put them in the text.
        bound = [f.attname for f in fields if f.attname in ("event_type", "created_at")]
        _first_start_texts[(Request, RuntimeEvent)] = (sql, plan, bound)
    sql, plan, bound = _first_start_texts[(Request, RuntimeEvent)]

    event_params = [{"event_type": "request.started", "created_at": created_at}[name] for name in bound]
    params = [*_lease_params(Request, conn, request_id, owner, now, lease_seconds), list(hosted_ids), *event_params]
    claimed, *read = pipelined([(sql, params, list), *reads])
    if not claimed:
        return None
    row = claimed[0]
    return _from_row(row[:-1], plan, conn), row[-1], read


_completion_texts: dict[tuple, tuple[str, list[str]]] = {}


def complete_in_one_statement(request: models.Model, where: dict[str, Any], values: dict[str, Any],
                              events: list[models.Model], along: list[models.Model], turn: models.Model,
                              tokens: int, now, totals_in: list[int]) -> tuple[int, int, list[int]] | None:
    """A completed run's transaction as one statement, committed on its own: the request
    updated (`values` set, last_seq advanced by len(events)) where `where` holds and its
    last_seq is still `request.last_seq`; its session's `session_total_tokens` advanced by
    `tokens` (and `last_activity_at` set to `now`); `along` inserted (the last checkpoints,
    conflicts skipped); `turn` (a MemoryTurn) inserted with the session's new total; and
    `events` inserted, the new total written into the `session_total_tokens` key of the
    payloads of the events whose seqs are `totals_in`. Returns (the session's new total,
    its last_request_seq, the events' ids), or None when the request did not match (nothing
    was written: a lost lease, or someone appended meanwhile; the caller takes the ordinary
    path).

    ORM equivalent: lifecycle.complete's transaction (`update_row` of the request,
    `store_steps`, `Session.add_tokens`, `insert_rows([turn])`, `append_events`): seven round
    trips (five statements, the seq check's read when someone appended, COMMIT) become
    one, once per completed run. PostgreSQL only, outside a transaction (None elsewhere)."""
    Request, Event, Turn = type(request), type(events[0]), type(turn)
    Session = Request._meta.get_field("session").related_model
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql" or conn.in_atomic_block:
        return None
    quote = conn.ops.quote_name
    key = (Request, Event, Turn, tuple(where), tuple(values), tuple(type(obj) for obj in along[:1]))
    if key not in _completion_texts:
        def col(model, name: str) -> str:
            return column(model, name, conn)

        sets = [f"{col(Request, name)} = {_typed('%s', model_field(Request, name), conn)}" for name in values]
        conditions = [f"{col(Request, name)} = %s" for name in where]
        seq = col(Request, "last_seq")
        sql = (f"WITH done AS (UPDATE {quote(Request._meta.db_table)} SET {', '.join(sets)}, {seq} = {seq} + %s "
               f"WHERE {' AND '.join(conditions)} AND {seq} = %s RETURNING 1), "
               f"tokens AS (UPDATE {quote(Session._meta.db_table)} SET {col(Session, 'last_activity_at')} = %s, "
               f"{col(Session, 'session_total_tokens')} = {col(Session, 'session_total_tokens')} + %s "
               f"WHERE {col(Session, 'pk')} = %s AND EXISTS (SELECT 1 FROM done) "
               f"RETURNING {col(Session, 'session_total_tokens')} AS total, {col(Session, 'last_request_seq')} AS last_seq), ")
        if along:
            sql += f"along AS ({_insert_head(type(along[0]), conn.vendor)[1]} WHERE EXISTS (SELECT 1 FROM done) ON CONFLICT DO NOTHING), "
        turn_fields = [f for f in Turn._meta.concrete_fields if f is not Turn._meta.auto_field]
        sql += (f"turn AS (INSERT INTO {quote(Turn._meta.db_table)} ({', '.join(quote(f.column) for f in turn_fields)}) "
                f"SELECT {', '.join('tokens.total' if f.attname == 'session_total_tokens' else _typed('%s', f, conn) for f in turn_fields)} "
                f"FROM tokens), ")
        event_fields = [f for f in Event._meta.concrete_fields if f is not Event._meta.auto_field]
        index = {f.attname: number for number, f in enumerate(event_fields)}
        picks = []
        for number, f in enumerate(event_fields):
            if f.attname == "payload":
                picks.append(f"CASE WHEN u.c{index['seq']} = ANY(%s::integer[]) THEN jsonb_set(u.c{number}, "
                             f"'{{session_total_tokens}}', to_jsonb(tokens.total)) ELSE u.c{number} END")
            else:
                picks.append(f"u.c{number}")
        arrays = ", ".join(_typed("%b", f, conn) + "[]" for f in event_fields)
        aliases = ", ".join(f"c{number}" for number in range(len(event_fields)))
        sql += (f"ev AS (INSERT INTO {quote(Event._meta.db_table)} ({', '.join(quote(f.column) for f in event_fields)}) "
                f"SELECT {', '.join(picks)} FROM UNNEST({arrays}) AS u({aliases}) CROSS JOIN tokens "
                f"RETURNING {col(Event, 'pk')} AS id, {col(Event, 'seq')} AS seq) "
                f"SELECT tokens.total, tokens.last_seq, ARRAY(SELECT id FROM ev ORDER BY seq) FROM tokens")
        _completion_texts[key] = (sql, [f.attname for f in turn_fields if f.attname != "session_total_tokens"])
    sql, turn_names = _completion_texts[key]
    params: list[Any] = [model_field(Request, name).get_db_prep_save(value, conn) for name, value in values.items()]
    params.append(len(events))
    params += [model_field(Request, name).get_db_prep_value(value, conn) for name, value in where.items()]
    params += [request.last_seq, model_field(Session, "last_activity_at").get_db_prep_value(now, conn), int(tokens),
               request.session_id]
    if along:
        params += _unnest_insert(list(along), conn)[1]
    turn_meta = {f.attname: f for f in Turn._meta.concrete_fields}
    params += [turn_meta[name].get_db_prep_save(turn_meta[name].pre_save(turn, True), conn) for name in turn_names]
    params.append(list(totals_in))
    params += _unnest_insert(events, conn)[1]
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    total, last_request_seq, ids = row
    return total, last_request_seq, list(ids)


# -- reads every run makes ---------------------------------------------------------------------


def recent_history(turn_model: type[models.Model], request_model: type[models.Model], session_pk: int,
                   before_seq: int, limit: int) -> list[tuple[int, str, str]]:
    """A session's history as (session_seq, user_message, agent_response): its newest summary
    turn first (as position 0, when there is one), then the last `limit` ordinary turns of
    requests before `before_seq` written after that summary, in session order. One statement
    (the newest summary is a CTE, computed once); ORM equivalent: `turns.filter(kind=SUMMARY)
    .order_by("-created_at").first()`, then `turns.filter(kind=TURN, request__session_seq__lt=
    before_seq, created_at__gt=summary.created_at).order_by("-request__session_seq")[:limit]`:
    every run reads this, and compiling those two queries cost more than running them."""
    return read_rows(history_statement(turn_model, request_model, limit, session_pk=session_pk,
                                       before_seq=before_seq))


def history_statement(turn_model: type[models.Model], request_model: type[models.Model], limit: int, *,
                      session_pk: int | None = None, before_seq: int | None = None, of_request=None) -> tuple:
    """`recent_history`'s statement, for a session and seq given, or for those `of_request`
    (a request id: its session, before its own seq), to be read by `read_rows` or along
    with a claim (`claim_first_start`)."""
    conn = connections[DEFAULT_DB_ALIAS]
    quote = conn.ops.quote_name

    def t(name: str) -> str:
        return column(turn_model, name, conn)

    def r(name: str) -> str:
        return column(request_model, name, conn)

    turns, requests = quote(turn_model._meta.db_table), quote(request_model._meta.db_table)
    if of_request is None:
        session, before, key = "%s", "%s", [session_pk]
        seq_key = [before_seq]
    else:
        session = f"(SELECT {r('session')} FROM {requests} WHERE {r('pk')} = %s)"
        before = f"(SELECT {r('session_seq')} FROM {requests} WHERE {r('pk')} = %s)"
        key = seq_key = [model_field(request_model, "pk").get_db_prep_value(of_request, conn)]
    sql = (
        f"WITH summary AS (SELECT {t('created_at')} AS created_at, {t('agent_response')} AS agent_response "
        f"FROM {turns} WHERE {t('session')} = {session} AND {t('kind')} = %s ORDER BY {t('created_at')} DESC LIMIT 1) "
        f"SELECT 0, '', agent_response FROM summary "
        f"UNION ALL SELECT * FROM (SELECT r.{r('session_seq')}, t.{t('user_message')}, t.{t('agent_response')} "
        f"FROM {turns} t JOIN {requests} r ON r.{r('pk')} = t.{t('request')} "
        f"WHERE t.{t('session')} = {session} AND t.{t('kind')} = %s AND r.{r('session_seq')} < {before} "
        f"AND NOT EXISTS (SELECT 1 FROM summary WHERE summary.created_at >= t.{t('created_at')}) "
        f"ORDER BY r.{r('session_seq')} DESC LIMIT %s) recent"
    )
    kinds = turn_model.Kind
    return sql, [*key, kinds.SUMMARY, *key, kinds.TURN, *seq_key, max(limit, 0)], _by_position


def _by_position(rows: list) -> list:
    return sorted(rows, key=lambda row: row[0])


def published_skill_rows(skill_model: type[models.Model], agent_id: str) -> list[tuple[str, str, str, str]]:
    """(name, description, content, location) of the skills published to the agent with this
    `agent_id`, by name. ORM equivalent: `PublishedSkill.objects.filter(agent__agent_id=
    agent_id).order_by("name").values_list(...)`: every run builds its agent through this and
    usually finds nothing, and compiling that query cost several times running it."""
    return read_rows(published_skills_statement(skill_model, agent_id=agent_id))


def published_skills_statement(skill_model: type[models.Model], *, agent_id: str | None = None,
                               of_request=None, request_model: type[models.Model] | None = None) -> tuple:
    """`published_skill_rows`' statement, for an agent id given or for the agent `of_request`
    (a request id of `request_model`)."""
    conn = connections[DEFAULT_DB_ALIAS]
    quote = conn.ops.quote_name
    agent_model = skill_model._meta.get_field("agent").related_model

    def s(name: str) -> str:
        return column(skill_model, name, conn)

    if of_request is None:
        which, key = f"a.{column(agent_model, 'agent_id', conn)} = %s", agent_id
    else:
        which = (f"a.{column(agent_model, 'pk', conn)} = (SELECT {column(request_model, 'agent', conn)} "
                 f"FROM {quote(request_model._meta.db_table)} WHERE {column(request_model, 'pk', conn)} = %s)")
        key = model_field(request_model, "pk").get_db_prep_value(of_request, conn)
    sql = (f"SELECT s.{s('name')}, s.{s('description')}, s.{s('content')}, s.{s('location')} "
           f"FROM {quote(skill_model._meta.db_table)} s JOIN {quote(agent_model._meta.db_table)} a "
           f"ON a.{column(agent_model, 'pk', conn)} = s.{s('agent')} "
           f"WHERE {which} ORDER BY s.{s('name')}")
    return sql, [key], list


def read_rows(statement: tuple) -> list:
    """The rows of one statement built above ((text, parameters, what to make of the rows))."""
    sql, params, finish = statement
    with bound_cursor() as cursor:
        cursor.execute(sql, params)
        return finish(cursor.fetchall())


def pipelined(statements: list[tuple]) -> list[list]:
    """The rows of each statement, all sent before any answer is awaited (psycopg's pipeline
    mode): one round trip for all of them on PostgreSQL, each committed on its own as in
    autocommit; one after another elsewhere. No ORM equivalent (the ORM awaits each answer)."""
    conn = connections[DEFAULT_DB_ALIAS]
    if conn.vendor != "postgresql" or len(statements) < 2:
        return [read_rows(statement) for statement in statements]
    cursors = []
    with bound_cursor() as first:  # connected, health-checked
        try:
            with conn.wrap_database_errors, conn.connection.pipeline():
                for index, (sql, params, _) in enumerate(statements):
                    cursor = first if index == 0 else bound_cursor()
                    cursors.append(cursor)
                    cursor.execute(sql, params)
            return [finish(cursor.fetchall()) for cursor, (_, _, finish) in zip(cursors, statements)]
        finally:
            for cursor in cursors[1:]:
                cursor.close()


def estimated_rows(conn, table: str) -> int | None:
    """PostgreSQL's planner estimate of `table`'s rows (`pg_class.reltuples`, kept by
    autovacuum; -1 when never analysed), for pages that must not COUNT(*) a big table. No ORM
    equivalent (`count()` is the exact, unbounded count this avoids)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return int(row[0]) if row and row[0] is not None else None


# -- memory search (full text) ---------------------------------------------------------------
# Written out of necessity: the ORM has no FTS5, and ranking by ts_rank over the migration's
# own tsvector columns with the query inlined beside the GIN index is not a QuerySet either.
# `mig` is migration 0004_memory_search, which names the tables, columns and triggers.


def fts5_phrase(term: str) -> str:
    """A term as an FTS5 string: double quotes around, inner double quotes doubled."""
    return '"' + term.replace('"', '""') + '"'


def sqlite_search_schema_present(conn, mig) -> bool:
    """Whether the FTS5 table and its triggers exist (a later table rebuild drops triggers)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")
        present = {row[0] for row in cursor.fetchall()}
    return {mig.FTS_TABLE, *mig.SQLITE_TRIGGERS} <= present


def install_sqlite_search_schema(conn, mig) -> None:
    """Reinstall the FTS5 table and triggers and rebuild the index (the migration's statements)."""
    from django.db import transaction

    with transaction.atomic(using=conn.alias), conn.cursor() as cursor:
        for sql in mig.install_statements("sqlite"):
            cursor.execute(sql)


def postgresql_search_columns_present(conn, mig) -> bool:
    """Whether the turn table has the migration's tsvector columns."""
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = %s AND column_name IN (%s, %s)",
            [mig.TURN_TABLE, *mig.PG_COLUMNS],
        )
        return cursor.fetchone()[0] == len(mig.PG_COLUMNS)


def search_turn_column(conn, mig, column: str, terms: list[str], *, kinds, agent_pks, session_pks, limit: int,
                       within: list[str] | None, weights_column: str) -> list[tuple[Any, float]]:
    """(turn_id, raw score) of the turns whose `column` matches any of `terms`, best first, among
    turns of `kinds` (and of `agent_pks` / `session_pks` when given); on SQLite `within`
    (turn ids) narrows the match inside FTS5. PostgreSQL: ts_rank over `<column>_tsv`;
    SQLite: -bm25 weighted to `column` (`weights_column` is the user-message column)."""
    params: list[Any] = []

    def scope_filters() -> str:
        sql = [f"m.kind IN ({', '.join(['%s'] * len(kinds))})"]
        params.extend(kinds)
        for name, pks in (("agent_id", agent_pks), ("session_id", session_pks)):
            if pks is not None:
                sql.append(f"m.{name} IN ({', '.join(['%s'] * len(pks))})")
                params.extend(pks)
        return " AND ".join(sql)

    turns = mig.TURN_TABLE
    if conn.vendor == "postgresql":
        tsv = f"m.{column}_tsv"
        term_sql = f"phraseto_tsquery('simple'::regconfig, {mig.PG_SPLIT.format('%s')})"
        tsquery = " || ".join([term_sql] * len(terms))
        params.extend(terms)  # the rank's tsquery
        params.extend(terms)  # the match's tsquery (inlined, so the planner sees it next to the GIN index)
        where = scope_filters()
        sql = (
            f"SELECT m.turn_id, ts_rank('{{1,1,1,1}}'::float4[], {tsv}, ({tsquery}), 1) AS raw "
            f"FROM {turns} m WHERE {tsv} @@ ({tsquery}) AND {where} "
            "ORDER BY raw DESC, m.created_at DESC LIMIT %s"
        )
    else:
        fts = mig.FTS_TABLE
        weights = "0.0, 1.0, 0.0" if column == weights_column else "0.0, 0.0, 1.0"
        match = "{%s} : (%s)" % (column, " OR ".join(fts5_phrase(t) for t in terms))
        if within:
            match = "({turn_id} : (%s)) AND (%s)" % (" OR ".join(fts5_phrase(t) for t in within), match)
        params.append(match)
        where = scope_filters()
        sql = (
            f"SELECT m.turn_id, -bm25({fts}, {weights}) AS raw "
            f"FROM {fts} JOIN {turns} m ON m.turn_id = {fts}.turn_id "
            f"WHERE {fts} MATCH %s AND {where} "
            "ORDER BY raw DESC, m.created_at DESC LIMIT %s"
        )
    params.append(limit)
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


# -- LISTEN/NOTIFY ------------------------------------------------------------------------


def is_postgresql(alias: str = "default") -> bool:
    return connections[alias].vendor == "postgresql"


def notify(channel: str, payload: str = "", alias: str = "default") -> None:
    """`pg_notify(channel, payload)` on this thread's Django connection: inside a transaction
    it is delivered when that commits (so a listener never hears of rows it cannot see yet),
    outside one at once. No ORM equivalent."""
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


def connect_params(alias: str = "default") -> dict[str, Any]:
    """psycopg's connect arguments for `alias`, without Django's own cursor factory and
    adapters, for the few connections that live outside the ORM (listeners)."""
    params = dict(connections[alias].get_connection_params())
    for django_only in ("cursor_factory", "context", "prepare_threshold", "pool"):
        params.pop(django_only, None)
    # A listener or a sender must never hang on a server that does not answer (libpq waits
    # for ever by default); the caller retries.
    params.setdefault("connect_timeout", 5)
    return params


def listen_connection(*channels: str, alias: str = "default"):
    """A connection of its own (autocommit) that LISTENs on `channels`: psycopg's
    `notifies()` then yields what others NOTIFY. No ORM equivalent."""
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(**connect_params(alias), autocommit=True)
    try:
        for channel in channels:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except Exception:
        conn.close()
        raise
    return conn


async def async_listen_connection(*channels: str, params: dict[str, Any]):
    """`listen_connection` for an event loop (`params` from `connect_params`, read on a
    thread beforehand: Django's connection handler is not for the loop's thread)."""
    import psycopg
    from psycopg import sql

    conn = await psycopg.AsyncConnection.connect(**params, autocommit=True)
    try:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    except Exception:
        await conn.close()
        raise
    return conn


def _payload(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def sender_connection(alias: str = "default"):
    """A connection of its own (autocommit) for `notify_on`."""
    import psycopg

    return psycopg.connect(**connect_params(alias), autocommit=True)


def notify_on(conn, channel: str, message: dict[str, Any]) -> bool:
    """`pg_notify(channel, <message as JSON>)` on a psycopg connection of `sender_connection`;
    False (nothing sent) when the message is over NOTIFY_LIMIT. No ORM equivalent."""
    payload = _payload(message)
    if len(payload.encode()) > NOTIFY_LIMIT:
        return False
    conn.execute("SELECT pg_notify(%s, %s)", [channel, payload])
    return True
