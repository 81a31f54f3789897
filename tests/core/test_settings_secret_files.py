"""mash_project.settings reads `NAME_FILE` for its secrets (django-environ's FileAwareEnv).

Each case boots Django in a child interpreter, so this suite still runs without Django
settings in this process (CI runs tests/core with `-p no:django`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, django
django.setup()
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({"api_key": settings.MASH_API_KEY, "secret_key": settings.SECRET_KEY,
                  "db_engine": db["ENGINE"], "db_name": db["NAME"], "db_host": db.get("HOST", "")}))
"""


def boot(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MASH_") and not k.startswith("DATABASE_URL") and k != "SECRET_KEY"}
    env.update(DJANGO_SETTINGS_MODULE="mash_project.settings", MASH_DATA_DIR=str(tmp_path / "data"),
               PYTHONPATH=str(REPO), **variables)
    return subprocess.run([sys.executable, "-c", PROBE], check=False, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def settings_of(tmp_path: Path, **variables: str) -> dict:
    proc = boot(tmp_path, **variables)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def secret_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_mash_api_key_file_sets_settings_mash_api_key(tmp_path):
    path = secret_file(tmp_path, "api_key", "mash-key-from-file-123\n")
    assert settings_of(tmp_path, MASH_API_KEY_FILE=path)["api_key"] == "mash-key-from-file-123"


def test_mash_secret_key_file_and_database_url_file_are_read_too(tmp_path):
    values = settings_of(
        tmp_path,
        MASH_SECRET_KEY_FILE=secret_file(tmp_path, "secret_key", "django-secret-from-file-0123456789abcdef\n"),
        DATABASE_URL_FILE=secret_file(tmp_path, "db", "postgres://mash:pw@db.example:5432/mashdb\n"),
    )
    assert values["secret_key"] == "django-secret-from-file-0123456789abcdef"
    assert (values["db_engine"], values["db_name"], values["db_host"]) == (
        "django.db.backends.postgresql", "mashdb", "db.example")


def test_the_plain_variable_still_works(tmp_path):
    assert settings_of(tmp_path, MASH_API_KEY="mash-key-from-env")["api_key"] == "mash-key-from-env"


@pytest.mark.parametrize("case", ["missing", "empty", "both"])
def test_an_unusable_key_file_stops_the_boot_naming_the_variable_not_the_secret(tmp_path, case):
    variables = {"MASH_API_KEY_FILE": str(tmp_path / "missing")}
    if case == "empty":
        variables["MASH_API_KEY_FILE"] = secret_file(tmp_path, "api_key", "\n")
    elif case == "both":
        variables = {"MASH_API_KEY_FILE": secret_file(tmp_path, "api_key", "file-key-value\n"),
                     "MASH_API_KEY": "env-key-value"}
    proc = boot(tmp_path, **variables)

    assert proc.returncode != 0
    assert "ImproperlyConfigured" in proc.stderr and "MASH_API_KEY_FILE" in proc.stderr
    assert "file-key-value" not in proc.stderr and "env-key-value" not in proc.stderr
