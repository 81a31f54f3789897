"""`manage.py apikey create|list|revoke`: manage the API keys stored in the database.

Keys are stored hashed (`mash_api.models.ApiKey`): `create` prints the full key once
and nothing can show it again. `MASH_API_KEY` from the environment is separate and
is not listed here.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from mash_api import auth
from mash_api.models import KEY_PREFIX, ApiKey

NAME_MAX = ApiKey._meta.get_field("name").max_length


def _when(value) -> str:
    if value is None:
        return "never"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def find_key(ident: str) -> ApiKey:
    """One key by prefix (also accepted: `mash_<prefix>...` or a whole key) or by name.

    A name shared by several active keys is ambiguous: revoke those by prefix.
    """
    ident = ident.strip()
    if not ident:
        raise CommandError("Give a key prefix or name (see 'apikey list').")
    prefix = ident[len(KEY_PREFIX):].split("_", 1)[0] if ident.startswith(KEY_PREFIX) else ident
    row = ApiKey.objects.filter(prefix=prefix).first()
    if row is not None:
        return row
    named = list(ApiKey.objects.filter(name=ident).order_by("-created_at"))
    active = [k for k in named if not k.revoked]
    if len(active) > 1:
        prefixes = ", ".join(k.prefix for k in active)
        raise CommandError(f"{len(active)} active keys are named {ident!r} ({prefixes}): revoke one by its prefix.")
    if active:
        return active[0]
    if named:
        return named[0]  # all revoked: the caller reports that
    raise CommandError(f"No API key with prefix or name {ident!r} (see 'apikey list').")


class Command(BaseCommand):
    help = (
        "Manage API keys for the /api/v1 routes. Keys are stored hashed: 'create' shows the "
        "full key once, 'list' shows names and prefixes only, 'revoke' disables a key at once."
    )

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", metavar="{create,list,revoke}", required=True)

        create = sub.add_parser("create", help="Issue a new key and print it once.",
                                description="Issue a new API key. The full key is printed once and never stored.")
        create.add_argument("--name", required=True,
                            help=f"A label for the key's holder, e.g. 'ci' or 'alice-laptop' (at most {NAME_MAX} characters).")
        create.add_argument("--quiet", action="store_true",
                            help="Print only the key on stdout (for scripts); the warning goes to stderr.")

        listing = sub.add_parser("list", help="List keys (never their secrets).",
                                 description="List keys: name, prefix, created, last used, revoked. Secrets are never shown.")
        listing.add_argument("--active", action="store_true", help="Hide revoked keys.")

        revoke = sub.add_parser("revoke", help="Revoke a key by prefix or name.",
                                description="Revoke a key: requests presenting it get 401 from now on.")
        revoke.add_argument("key", metavar="PREFIX_OR_NAME",
                            help="The key's prefix as shown by 'list' (or the whole key), or its name if unique.")

    def handle(self, *args, **options):
        return getattr(self, f"handle_{options['action']}")(**options)

    def handle_create(self, *, name: str, quiet: bool = False, **options):
        name = (name or "").strip()
        if not name:
            raise CommandError("--name must not be blank.")
        if len(name) > NAME_MAX:
            raise CommandError(f"--name is longer than {NAME_MAX} characters.")
        row, key = ApiKey.issue(name)
        auth.forget_cached_configuration()
        warning = "Store this key now: it is not stored in readable form and will not be shown again."
        if quiet:
            self.stdout.write(key)
            self.stderr.write(warning)
            return
        self.stdout.write(self.style.SUCCESS(f"Created API key {row.name!r} (prefix {row.prefix})."))
        self.stdout.write("")
        self.stdout.write(f"    {key}")
        self.stdout.write("")
        self.stdout.write(self.style.WARNING(warning))
        self.stdout.write("Clients send it as 'Authorization: Bearer <key>' (or 'X-API-Key: <key>').")

    def handle_list(self, *, active: bool = False, **options):
        rows = ApiKey.objects.all().order_by("created_at", "id")
        if active:
            rows = rows.active()
        table = [("NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED")]
        for row in rows:
            table.append((row.name, row.prefix, _when(row.created_at), _when(row.last_used_at),
                          _when(row.revoked_at) if row.revoked else "no"))
        if len(table) == 1:
            self.stdout.write("No API keys. Create one with 'manage.py apikey create --name NAME'.")
            return
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for index, line in enumerate(table):
            text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
            self.stdout.write(self.style.MIGRATE_HEADING(text) if index == 0 else text)

    def handle_revoke(self, *, key: str, **options):
        row = find_key(key)
        if row.revoked:
            self.stdout.write(f"Key {row.name!r} ({row.prefix}) was already revoked at {_when(row.revoked_at)}.")
            return
        row.revoke()
        auth.forget_cached_configuration()
        self.stdout.write(self.style.SUCCESS(f"Revoked key {row.name!r} ({row.prefix})."))
