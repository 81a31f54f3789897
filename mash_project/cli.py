"""The `mash` console script: Django management commands under `mash_project.settings`.

`mash host serve ...` is the documented spelling of `serve`; every other word is a
management command name (`mash migrate`, `mash status`, ...). `mash --help` lists Mash's
own commands, grouped; Django's others stay one word away (`mash django --help`).
"""

from __future__ import annotations

import os
import sys

ALIASES = {("host", "serve"): ["serve"]}

# What a user of Mash reaches for, in the order they meet it; (words typed, command name).
GROUPS: list[tuple[str, list[tuple[str, str]]]] = [
    ("serve", [("host serve", "serve")]),
    ("client", [("connect", "connect"), ("status", "status"), ("agents", "agents"), ("sessions", "sessions"),
                ("history", "history"), ("repl", "repl"), ("workflow", "workflow")]),
    ("operate", [("apikey", "apikey"), ("prune", "prune"), ("createsuperuser", "createsuperuser"),
                 ("migrate", "migrate"), ("qcluster", "qcluster"), ("runserver", "runserver")]),
]
HELP_FLAGS = ("-h", "--help", "help")


def translate(argv: list[str]) -> list[str]:
    if len(argv) >= 2 and (argv[0], argv[1]) in ALIASES:
        return ALIASES[(argv[0], argv[1])] + argv[2:]
    return argv


def first_line(name: str) -> str:
    from django.core.management import get_commands, load_command_class

    try:
        text = load_command_class(get_commands()[name], name).help or ""
    except Exception:  # a command that cannot load still gets its line
        return ""
    sentence = " ".join(text.split()).split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= 90 else sentence[:87] + "..."


def print_overview(groups=GROUPS, title: str = "mash") -> None:
    from django.core.management import get_commands

    known = get_commands()
    lines = [f"usage: {title} <command> [options]    ({title} <command> --help for its flags)", ""]
    width = max(len(words) for _, items in groups for words, _ in items)
    for group, items in groups:
        lines.append(f"{group}:")
        for words, name in items:
            if name in known:
                lines.append(f"  {words.ljust(width)}  {first_line(name)}")
        lines.append("")
    if title == "mash":
        lines.append("Django's other commands: mash django --help   (mash django <command> runs one)")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):
        from mash_core import __version__

        print(f"mash {__version__}")
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mash_project.settings")
    import django

    if not args or args[0] in HELP_FLAGS and len(args) == 1:
        django.setup()
        print_overview()
        return
    if args[0] == "host" and (len(args) == 1 or args[1] in HELP_FLAGS):
        django.setup()
        print_overview([("host", [("serve", "serve")])], title="mash host")
        return
    if args[0] == "django":
        args = args[1:] or ["help"]
        if args in (["--help"], ["-h"]):
            args = ["help"]
    from django.core.management import execute_from_command_line

    execute_from_command_line(["mash", *translate(args)])


if __name__ == "__main__":
    main()
