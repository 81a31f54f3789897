"""mash_runtime.conf: one table of settings, read live, and the start-up warnings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.core.management import call_command

from mash_runtime.conf import SETTINGS, conf, contradictions

ROOT = Path(__file__).resolve().parent.parent.parent


def ids(messages) -> set[str]:
    return {m.id for m in messages}


def test_it_reads_the_setting_or_its_default(settings):
    settings.MASH_WORKER_CONCURRENCY = 7
    assert conf.WORKER_CONCURRENCY == 7
    del settings.MASH_WORKER_CONCURRENCY
    assert conf.WORKER_CONCURRENCY == 100
    with pytest.raises(AttributeError):
        conf.NO_SUCH_SETTING  # noqa: B018


def test_it_lists_every_mash_setting_the_code_reads():
    named = {s.name for s in SETTINGS}
    read = set()
    for package in ("mash_runtime", "mash_api", "mash_telemetry", "mash_project"):
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            read |= set(re.findall(r"settings\.(MASH_[A-Z_]+)", path.read_text()))
            read |= set(re.findall(r"getattr\(settings, \"(MASH_[A-Z_]+)\"", path.read_text()))
    assert read - named == set(), "read outside mash_runtime/conf.py's table"


def test_defaults_by_database(settings):
    settings.MASH_WORKER_DB_THREADS = 0
    settings.MASH_WEB_THREADS = 0
    assert conf.worker_db_threads == (1 if conf.is_sqlite else 4)
    assert conf.skills_dir == Path(settings.MASH_SKILLS_DIR)


def test_the_default_settings_contradict_nothing():
    assert contradictions() == []


def test_it_warns_about_settings_that_cannot_all_hold(settings):
    settings.MASH_LEASE_SECONDS = 1
    assert "mash.W004" in ids(contradictions())
    settings.MASH_LEASE_SECONDS = 30
    if conf.is_sqlite:
        settings.MASH_WORKER_DB_THREADS = 4
        assert "mash.W003" in ids(contradictions())
    else:
        settings.MASH_WORKER_DB_THREADS = 4
        assert "mash.W003" not in ids(contradictions())


def test_a_web_pool_smaller_than_its_threads_is_warned_about(settings):
    databases = {"default": {**settings.DATABASES["default"], "ENGINE": "django.db.backends.postgresql",
                             "OPTIONS": {"pool": {"min_size": 2, "max_size": 6}}}}
    settings.DATABASES = databases
    settings.MASH_WEB_THREADS = 8
    assert "mash.W002" in ids(contradictions())
    settings.MASH_WEB_THREADS = 0  # the default: the pool's size less four
    assert "mash.W002" not in ids(contradictions())
    databases["default"]["OPTIONS"]["pool"]["min_size"] = 10
    assert "mash.W001" in ids(contradictions())


def test_start_up_checks_report_them(settings, capsys):
    settings.MASH_LEASE_SECONDS = 1
    call_command("check")
    assert "mash.W004" in capsys.readouterr().err
