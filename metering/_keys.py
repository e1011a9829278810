"""The control API's keys: their format, their hash, and what a tenant name may be."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime

TENANT_RULE = "1-64 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_MAX = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiKeyView:
    """A key as it is listed: never its secret, nor its hash."""

    id: str
    tenant: str
    name: str
    prefix: str
    """Shown to tell keys apart: the `<prefix>` of `vr_<prefix>_<secret>`."""
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class NewApiKey:
    """A key just created. `key` is the whole secret: shown once, never stored (only its hash)."""

    id: str
    tenant: str
    name: str
    key: str = field(repr=False)  # a logged or printed NewApiKey must not leak it
    prefix: str
    created_at: datetime


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or _TENANT.fullmatch(tenant) is None:
        raise ValueError(f"tenant {tenant!r} is not a tenant name: {TENANT_RULE}")
    return tenant


def check_name(name: str) -> str:
    if len(name) > NAME_MAX:
        raise ValueError(f"API key name is {len(name)} characters long: at most {NAME_MAX}")
    return name


def new_key() -> tuple[str, str]:
    """A fresh key `vr_<prefix>_<secret>` and its prefix (8 hex digits; the secret is 32 random
    bytes, URL-safe base64)."""
    prefix = secrets.token_hex(4)
    return f"vr_{prefix}_{secrets.token_urlsafe(32)}", prefix


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
