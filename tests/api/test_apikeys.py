"""API keys: the `apikey` command, the admin, and `check_bind_address`."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.messages import get_messages
from django.core.management import call_command, execute_from_command_line
from django.core.management.base import CommandError

from mash_api import auth
from mash_api.auth import InsecureBindError, check_bind_address
from mash_api.models import ApiKey
from mash_runtime.host import set_host

HEALTH = "/api/v1/health"
KEY_RE = re.compile(r"mash_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}")


@pytest.fixture
def host(db, settings):
    """The test host app, MASH_API_KEY empty: only keys stored in the database count."""
    settings.MASH_HOST_APP = "tests.apps.engine_host:build_host"
    settings.MASH_API_KEY = ""
    set_host(None)
    auth.forget_cached_configuration()
    auth._last_used_written.clear()
    yield
    set_host(None)
    auth.forget_cached_configuration()
    auth._last_used_written.clear()


def run(*args) -> str:
    out = StringIO()
    call_command("apikey", *args, stdout=out, stderr=StringIO())
    auth.forget_cached_configuration()
    return out.getvalue()


def create(name: str = "ci") -> tuple[str, str]:
    out = run("create", "--name", name)
    keys = KEY_RE.findall(out)
    assert len(keys) == 1, out
    return keys[0], out


# -- the command --------------------------------------------------------------------------


def test_it_creates_a_key_that_authenticates(host, client):
    assert client.get(HEALTH).status_code == 200  # no key configured: open
    key, out = create("ci")
    assert "will not be shown again" in out
    row = ApiKey.objects.get()
    assert row.name == "ci" and key.startswith(f"mash_{row.prefix}_")
    assert key not in row.hashed_secret

    assert client.get(HEALTH).status_code == 401  # a stored key now guards the API
    assert client.get(HEALTH, HTTP_AUTHORIZATION="Bearer mash_00000000_wrong").status_code == 401
    response = client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 200
    assert response.json()["data"]["status"] == "ok"
    assert client.get(HEALTH, HTTP_X_API_KEY=key).status_code == 200
    row.refresh_from_db()
    assert row.last_used_at is not None


def test_it_prints_only_the_key_when_quiet(host):
    out, err = StringIO(), StringIO()
    call_command("apikey", "create", "--name", "script", "--quiet", stdout=out, stderr=err)
    assert KEY_RE.fullmatch(out.getvalue().strip())
    assert "will not be shown again" in err.getvalue()


def test_it_rejects_a_blank_name(host):
    with pytest.raises(CommandError, match="must not be blank"):
        run("create", "--name", "  ")
    assert not ApiKey.objects.exists()


def test_it_lists_keys_without_secrets(host):
    key, _ = create("ci")
    create("alice-laptop")
    run("revoke", "alice-laptop")
    out = run("list")
    rows = {r.name: r for r in ApiKey.objects.all()}
    assert "NAME" in out and "LAST USED" in out
    for row in rows.values():
        assert row.name in out and row.prefix in out
        assert row.hashed_secret not in out
    assert key not in out
    assert key.split("_", 2)[2] not in out  # not even the secret part
    ci_line = next(line for line in out.splitlines() if line.startswith("ci "))
    assert ci_line.rstrip().endswith("no") and "never" in ci_line
    alice_line = next(line for line in out.splitlines() if line.startswith("alice-laptop"))
    assert not alice_line.rstrip().endswith("no")
    assert "alice-laptop" not in run("list", "--active")


def test_it_says_when_there_are_no_keys(host):
    assert "No API keys" in run("list")


def test_it_revokes_a_key_by_prefix(host, client):
    key, _ = create("ci")
    other, _ = create("other")
    prefix = ApiKey.objects.get(name="ci").prefix
    assert "Revoked" in run("revoke", prefix)
    assert client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 401
    assert client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {other}").status_code == 200
    assert "already revoked" in run("revoke", prefix)


def test_it_revokes_a_key_by_name_or_whole_key(host, client):
    key, _ = create("ci")
    run("revoke", "ci")
    assert ApiKey.objects.get(name="ci").revoked
    key2, _ = create("ci2")
    run("revoke", key2)
    assert ApiKey.objects.get(name="ci2").revoked
    # No active key left: the API is open again.
    assert client.get(HEALTH).status_code == 200


def test_it_refuses_an_ambiguous_name(host):
    create("ci")
    create("ci")
    with pytest.raises(CommandError, match="2 active keys are named 'ci'"):
        run("revoke", "ci")
    assert ApiKey.objects.active().count() == 2


def test_it_fails_on_an_unknown_key(host):
    with pytest.raises(CommandError, match="No API key with prefix or name 'nope'") as excinfo:
        run("revoke", "nope")
    assert excinfo.value.returncode == 1


def test_it_exits_non_zero_from_the_command_line(transactional_db, host, capsys):
    # transactional_db: run_from_argv closes every connection when it ends.
    with pytest.raises(SystemExit) as excinfo:
        execute_from_command_line(["manage.py", "apikey", "revoke", "nope"])
    assert excinfo.value.code == 1
    err = capsys.readouterr().err
    assert err.strip() == "CommandError: No API key with prefix or name 'nope' (see 'apikey list')."


def test_it_documents_every_flag(host, capsys):
    for args, flags in ((["create"], ["--name", "--quiet"]), (["list"], ["--active"]), (["revoke"], ["PREFIX_OR_NAME"])):
        with pytest.raises(SystemExit):
            execute_from_command_line(["manage.py", "apikey", *args, "--help"])
        out = capsys.readouterr().out
        for flag in flags:
            assert flag in out


# -- the admin ----------------------------------------------------------------------------


def test_it_issues_a_key_from_the_admin_and_shows_it_once(host, admin_client, client):
    response = admin_client.get("/admin/mash_api/apikey/add/")
    assert response.status_code == 200
    form_fields = list(response.context["adminform"].form.fields)
    assert form_fields == ["name"]

    response = admin_client.post("/admin/mash_api/apikey/add/", {"name": "ops"}, follow=True)
    assert response.status_code == 200
    row = ApiKey.objects.get()
    assert row.name == "ops"
    shown = [m.message for m in get_messages(response.wsgi_request)]
    page = response.content.decode()
    keys = KEY_RE.findall(page)
    assert len(set(keys)) == 1, shown
    key = keys[0]
    assert key.startswith(f"mash_{row.prefix}_")
    assert "will not be shown again" in page
    auth.forget_cached_configuration()
    assert client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {key}").status_code == 200

    # Gone on the next page, and never on the key's own page.
    assert key not in admin_client.get("/admin/mash_api/apikey/").content.decode()
    change = admin_client.get(f"/admin/mash_api/apikey/{row.pk}/change/").content.decode()
    assert key not in change
    assert row.hashed_secret not in change
    assert row.prefix in change


def test_it_keeps_prefix_and_timestamps_read_only(host, admin_client):
    row, _ = ApiKey.issue("ops")
    response = admin_client.post(f"/admin/mash_api/apikey/{row.pk}/change/",
                                 {"name": "renamed", "prefix": "ffffffff", "revoked_at_0": "2020-01-01"})
    assert response.status_code == 302
    fresh = ApiKey.objects.get(pk=row.pk)
    assert (fresh.name, fresh.prefix, fresh.hashed_secret, fresh.revoked_at) == (
        "renamed", row.prefix, row.hashed_secret, None)


def test_it_revokes_selected_keys_from_the_admin(host, admin_client, client):
    keep, keep_key = ApiKey.issue("keep")
    gone, gone_key = ApiKey.issue("gone")
    response = admin_client.post("/admin/mash_api/apikey/", {"action": "revoke_selected", "_selected_action": [gone.pk]},
                                 follow=True)
    assert response.status_code == 200
    assert "Revoked 1 key." in response.content.decode()
    assert ApiKey.objects.get(pk=gone.pk).revoked and not ApiKey.objects.get(pk=keep.pk).revoked
    auth.forget_cached_configuration()
    assert client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {gone_key}").status_code == 401
    assert client.get(HEALTH, HTTP_AUTHORIZATION=f"Bearer {keep_key}").status_code == 200


def test_it_lists_keys_in_the_admin_without_secrets(host, admin_client):
    row, key = ApiKey.issue("ops")
    page = admin_client.get("/admin/mash_api/apikey/").content.decode()
    assert "ops" in page and row.prefix in page
    assert key not in page and row.hashed_secret not in page


# -- check_bind_address -----------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST",
                                     "::ffff:127.0.0.1"])
def test_it_allows_loopback_addresses_without_a_key(host, address):
    check_bind_address(address, insecure=False)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "192.168.1.10", "example.com", "128.0.0.1",
                                     "localhost.example.com"])
def test_it_refuses_other_addresses_without_a_key(host, address):
    with pytest.raises(ValueError) as excinfo:
        check_bind_address(address, insecure=False)
    assert isinstance(excinfo.value, InsecureBindError)
    message = str(excinfo.value)
    assert "\n" not in message
    for hint in ("MASH_API_KEY", "--api-key", "--insecure"):
        assert hint in message


def test_it_allows_any_address_when_insecure(host):
    check_bind_address("0.0.0.0", insecure=True)


def test_it_allows_any_address_with_an_environment_key(host, settings):
    settings.MASH_API_KEY = "k"
    check_bind_address("0.0.0.0", insecure=False)


def test_it_allows_any_address_with_an_active_stored_key(host):
    row, _ = ApiKey.issue("ops")
    check_bind_address("0.0.0.0", insecure=False)
    row.revoke()
    with pytest.raises(InsecureBindError):
        check_bind_address("0.0.0.0", insecure=False)
