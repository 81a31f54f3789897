"""Shared fixtures. Tests under tests/core need no database and use none of these."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_request(db):
    """Create an Agent, Session and Request row directly (no engine involved)."""
    from mash_runtime.models import Agent, Request, Session

    def make(agent_id: str = "primary", session_id: str = "s1", message: str = "hello", **fields):
        agent, _ = Agent.objects.get_or_create(agent_id=agent_id, defaults={"role": "primary"})
        session, _ = Session.objects.get_or_create(agent=agent, session_id=session_id)
        seq = session.requests.count() + 1
        return Request.objects.create(agent=agent, session=session, session_seq=seq, message=message, **fields)

    return make


@pytest.fixture(autouse=True)
def _api_log_written_inline(request):
    """In-process tests read the API log right after a request, often from a short-lived
    event loop (async_to_sync): write rows inline. Live servers in tests/e2e keep the
    batched default, and tests/telemetry/test_middleware.py tests the batch writer itself.
    (tests/core also runs without pytest-django, hence no `settings` argument.)"""
    if request.config.pluginmanager.hasplugin("django"):
        settings = request.getfixturevalue("settings")
        settings.MASH_API_LOG_FLUSH_SECONDS = 0
        if "e2e" not in request.node.path.parts:
            # Users made for a test hash their passwords with the cheapest hasher: PBKDF2's
            # 870,000 rounds cost about a second per user on this machine, which the page
            # tests paid in every setup. Not in tests/e2e: the servers they start keep the
            # real hashers and must check the passwords those tests store.
            settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# A developer's shell may export a provider's key; the provider a test meets is its own choice.
PROVIDER_VARIABLES = ("MASH_LLM", "ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY_FILE", "ANTHROPIC_BASE_URL",
                      "OPENAI_API_KEY", "OPENAI_API_KEY_FILE", "OPENAI_BASE_URL", "OPENAI_CHAT_BASE_URL",
                      "OPENAI_CHAT_API_KEY", "GEMINI_API_KEY", "GEMINI_API_KEY_FILE", "GOOGLE_API_KEY",
                      "GEMINI_BASE_URL")


@pytest.fixture(autouse=True)
def _no_provider_from_the_shell(monkeypatch):
    for name in PROVIDER_VARIABLES:
        monkeypatch.delenv(name, raising=False)



KEEP_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


def wipe_tables(using: str = "default") -> None:
    """Empty every table but the migration record, content types and permissions.

    DELETE instead of the flush a transactional test ends with: on PostgreSQL that flush
    (a TRUNCATE of every table, then post_migrate recreating every content type and
    permission) costs most of a second a test; DELETE of a test's few rows costs ~10 ms.
    What is left is what the flush leaves (content types and permissions are what its
    post_migrate puts back). Foreign keys are DEFERRABLE INITIALLY DEFERRED on both
    backends, so order is free.
    """
    from django.db import connections, transaction

    connection = connections[using]
    tables = [t for t in connection.introspection.django_table_names(only_existing=True, include_views=False)
              if t not in KEEP_TABLES]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f"DELETE FROM {connection.ops.quote_name(table)}")


def _wipe_instead_of_flush(original):
    def _fixture_teardown(self):
        # available_apps, serialized_rollback and reset_sequences each need the flush's own
        # semantics (no test here uses them); every other transactional test ends with DELETE.
        if self.available_apps is not None or self.serialized_rollback or self.reset_sequences:
            return original(self)
        for db_name in self._databases_names(include_mirrors=False):
            wipe_tables(db_name)

    return _fixture_teardown


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """pytest-django's, with every transactional test (`transactional_db`,
    `django_db(transaction=True)`) cleaned up by `wipe_tables` rather than a flush; and
    then, before the test database is dropped (which PostgreSQL refuses while a session is
    connected), the doorbell layer's own connections closed."""
    from django.test import TransactionTestCase

    original = TransactionTestCase.__dict__["_fixture_teardown"]
    TransactionTestCase._fixture_teardown = _wipe_instead_of_flush(original)
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = original
    from channels.layers import channel_layers

    for layer in list(channel_layers.backends.values()):
        close = getattr(layer, "close_connections", None)
        if close is not None:
            close()
