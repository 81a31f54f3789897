"""API keys: stored hashed, shown once, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.db import models
from django.utils import timezone

KEY_PREFIX = "mash_"


def hash_secret(secret: str) -> str:
    # Keys are 256-bit random strings, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyQuerySet(models.QuerySet):
    def active(self):
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    hashed_secret = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @classmethod
    def issue(cls, name: str) -> tuple["ApiKey", str]:
        """Create a key; returns the row and the full key, which is never stored or shown again."""
        prefix = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        key = f"{KEY_PREFIX}{prefix}_{secret}"
        row = cls.objects.create(name=name.strip() or "unnamed", prefix=prefix, hashed_secret=hash_secret(key))
        return row, key

    @classmethod
    def match(cls, presented: str) -> "ApiKey | None":
        if not presented.startswith(KEY_PREFIX):
            return None
        prefix = presented[len(KEY_PREFIX):].split("_", 1)[0]
        row = cls.objects.active().filter(prefix=prefix).first()
        if row is None or not hmac.compare_digest(row.hashed_secret, hash_secret(presented)):
            return None
        return row

    def revoke(self) -> None:
        if self.revoked_at is None:
            self.revoked_at = timezone.now()
            self.save(update_fields=["revoked_at"])
