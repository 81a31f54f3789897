"""Full-text search over memory turns (issue 7).

PostgreSQL: two stored generated `tsvector` columns (`to_tsvector('simple', ...)` of
`user_message` and `agent_response`, punctuation turned into spaces first, see
`PG_SPLIT`), each with a GIN index. The model does not
declare them: the ORM never writes them and the search service reads them with SQL.

SQLite: an FTS5 table `mash_runtime_memoryturn_fts(turn_id, user_message,
agent_response)` kept in sync by three triggers. `turn_id` is an indexed FTS column
(not UNINDEXED) so the delete trigger finds the row through the index (`{turn_id} :
"<hex>"`) instead of scanning the table; searches always filter on the two text
columns. Note: Django's SQLite schema editor rebuilds a table for some `AlterField`s,
which drops its triggers; `mash_runtime.memory_search.ensure_search_schema` notices and
reinstalls them (and rebuilds the index) on the next search.

Other backends get nothing (the search service refuses them with a clear error).
"""

from django.db import migrations

TURN_TABLE = "mash_runtime_memoryturn"
FTS_TABLE = "mash_runtime_memoryturn_fts"
SQLITE_TRIGGERS = (f"{FTS_TABLE}_ai", f"{FTS_TABLE}_ad", f"{FTS_TABLE}_au")
PG_COLUMNS = ("user_message_tsv", "agent_response_tsv")

_FTS_DELETE = (
    f"DELETE FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH '{{turn_id}} : \"' || old.turn_id || '\"';"
)
_FTS_INSERT = (
    f"INSERT INTO {FTS_TABLE}(turn_id, user_message, agent_response) "
    "VALUES (new.turn_id, new.user_message, new.agent_response);"
)

SQLITE_INSTALL = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "turn_id, user_message, agent_response, tokenize = 'unicode61 remove_diacritics 0')",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_ai",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_ad",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_au",
    f"CREATE TRIGGER {FTS_TABLE}_ai AFTER INSERT ON {TURN_TABLE} BEGIN {_FTS_INSERT} END",
    f"CREATE TRIGGER {FTS_TABLE}_ad AFTER DELETE ON {TURN_TABLE} BEGIN {_FTS_DELETE} END",
    f"CREATE TRIGGER {FTS_TABLE}_au AFTER UPDATE OF turn_id, user_message, agent_response ON {TURN_TABLE} "
    f"BEGIN {_FTS_DELETE} {_FTS_INSERT} END",
    # (Re)build the index from the table: existing turns become searchable too.
    f"DELETE FROM {FTS_TABLE}",
    f"INSERT INTO {FTS_TABLE}(turn_id, user_message, agent_response) "
    f"SELECT turn_id, user_message, agent_response FROM {TURN_TABLE}",
]

SQLITE_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_ai",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_ad",
    f"DROP TRIGGER IF EXISTS {FTS_TABLE}_au",
    f"DROP TABLE IF EXISTS {FTS_TABLE}",
]

# Punctuation and spaces become one space before PostgreSQL's parser sees the text, so
# `engine.py`, `foo-bar`, `a@b.com` or `mash_runtime/x` split into words as FTS5's
# unicode61 tokenizer splits them (the parser alone would keep them as one file/email/
# host token). The search applies the same expression to each query term.
PG_SPLIT = "regexp_replace(coalesce({}, ''), '[[:punct:][:space:]]+', ' ', 'g')"

PG_INSTALL = [
    f"ALTER TABLE {TURN_TABLE} ADD COLUMN IF NOT EXISTS user_message_tsv tsvector "
    f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {PG_SPLIT.format('user_message')})) STORED",
    f"ALTER TABLE {TURN_TABLE} ADD COLUMN IF NOT EXISTS agent_response_tsv tsvector "
    f"GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, {PG_SPLIT.format('agent_response')})) STORED",
    f"CREATE INDEX IF NOT EXISTS mash_turn_user_tsv_gin ON {TURN_TABLE} USING GIN (user_message_tsv)",
    f"CREATE INDEX IF NOT EXISTS mash_turn_agent_tsv_gin ON {TURN_TABLE} USING GIN (agent_response_tsv)",
]

PG_UNINSTALL = [
    "DROP INDEX IF EXISTS mash_turn_user_tsv_gin",
    "DROP INDEX IF EXISTS mash_turn_agent_tsv_gin",
    f"ALTER TABLE {TURN_TABLE} DROP COLUMN IF EXISTS user_message_tsv",
    f"ALTER TABLE {TURN_TABLE} DROP COLUMN IF EXISTS agent_response_tsv",
]


def install_statements(vendor: str) -> list[str]:
    return {"postgresql": PG_INSTALL, "sqlite": SQLITE_INSTALL}.get(vendor, [])


def uninstall_statements(vendor: str) -> list[str]:
    return {"postgresql": PG_UNINSTALL, "sqlite": SQLITE_UNINSTALL}.get(vendor, [])


def install(apps, schema_editor):
    for sql in install_statements(schema_editor.connection.vendor):
        schema_editor.execute(sql, params=None)


def uninstall(apps, schema_editor):
    for sql in uninstall_statements(schema_editor.connection.vendor):
        schema_editor.execute(sql, params=None)


class Migration(migrations.Migration):

    dependencies = [
        ("mash_runtime", "0003_workflows"),
    ]

    operations = [
        migrations.RunPython(install, uninstall, elidable=False),
    ]
