"""The `mash` console script: Django management commands under `mash_project.settings`.

`mash host serve ...` is the documented spelling of `serve`; every other word is a
management command name (`mash migrate`, `mash status`, ...).
"""

from __future__ import annotations

import os
import sys

ALIASES = {("host", "serve"): ["serve"]}


def translate(argv: list[str]) -> list[str]:
    if len(argv) >= 2 and (argv[0], argv[1]) in ALIASES:
        return ALIASES[(argv[0], argv[1])] + argv[2:]
    return argv


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from mash_core import __version__

        print(f"mash {__version__}")
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(["mash", *translate(args)])


if __name__ == "__main__":
    main()
