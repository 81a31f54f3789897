"""`mash_core` must never import Django: checked at runtime in a clean interpreter and statically."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import mash_core

PACKAGE_DIR = Path(mash_core.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent

MODULES = [
    "mash_core",
    "mash_core.agent",
    "mash_core.llm",
    "mash_core.tools",
    "mash_core.skills",
    "mash_core.config",
    "mash_core.structured",
    "mash_core.messages",
    "mash_core.errors",
    "mash_core.mcp",
]

PROBE = f"""
import importlib, sys
for name in {MODULES!r}:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))
assert not loaded, f"mash_core imported Django modules: {{loaded}}"
assert not any(m == 'django' or m.startswith('django.') for m in sys.modules)
print("ok")
"""


def test_it_imports_every_public_module_without_loading_django():
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def _django_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {n}" for n in names
                  if n == "django" or n.startswith("django.")]
    return found


def test_it_has_no_django_import_statement_anywhere_in_the_package():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) >= 10  # the walk really sees the package
    offenders = [hit for path in files for hit in _django_imports(path)]
    assert offenders == []


def test_it_detects_a_django_import_in_the_static_check(tmp_path, monkeypatch):
    """The static check itself must be able to fail."""
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os, django\n"
        "from django.db import models\n"
        "def f():\n"
        "    from django.conf import settings\n"
        "    import importlib; importlib.import_module('django.apps')\n"
        "from djangoish import x\n"
    )
    hits = _django_imports(bad)
    assert sorted(h.split(": ", 1)[1] for h in hits) == ["django", "django.apps", "django.conf", "django.db"]
