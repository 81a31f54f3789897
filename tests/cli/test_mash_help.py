"""The `mash` command a user meets first shows Mash, not Django's whole command list."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mash(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MASH_DATA_DIR": str(tmp_path)}
    env.pop("DATABASE_URL", None)  # help needs no database
    return subprocess.run([sys.executable, "-m", "mash_project.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_mash_help_lists_mash_commands_grouped_with_a_pointer_to_django(tmp_path):
    for flag in ("--help", "-h"):
        out = mash(flag, tmp_path=tmp_path)
        assert out.returncode == 0, out.stderr
        text = out.stdout
        assert text.index("serve:") < text.index("client:") < text.index("operate:")
        for words in ("host serve", "connect", "status", "repl", "workflow", "apikey", "prune", "migrate"):
            assert f"  {words} " in text, words
        assert "sqlflush" not in text and "squashmigrations" not in text
        assert "mash django --help" in text


def test_mash_host_help_works(tmp_path):
    out = mash("host", "--help", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "serve" in out.stdout and "Unknown command" not in out.stdout + out.stderr


def test_client_commands_hide_djangos_flags(tmp_path):
    out = mash("status", "--help", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--api-base-url" in out.stdout
    for flag in ("--settings", "--pythonpath", "--traceback"):
        assert flag not in out.stdout, flag


def test_djangos_commands_stay_one_word_away(tmp_path):
    out = mash("django", "--help", tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "sqlflush" in out.stdout
