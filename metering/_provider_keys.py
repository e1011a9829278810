"""Tenants' provider keys (bring your own key), encrypted at rest.

A key is stored as a Fernet token (AES-128-CBC and HMAC-SHA256, from `cryptography`) made with the
process's master keys (VOICERUN_MASTER_KEYS). The first master key encrypts and every one of them
decrypts (MultiFernet), so a master key is rotated by putting a new one first, re-encrypting the
stored keys (`Ledger.reencrypt_provider_keys`), then dropping the old one. The ledger never holds
a master key: the cipher is passed to each method that needs it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, get_args

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from pipeline.providers import PROVIDERS

from ._errors import MeteringError

ProviderType = Literal["stt", "llm", "tts"]
PROVIDER_TYPES: tuple[ProviderType, ...] = get_args(ProviderType)

MASTER_KEYS_ENV = "VOICERUN_MASTER_KEYS"
MASTER_KEYS_HELP = (
    f"{MASTER_KEYS_ENV} must hold one or more Fernet keys; make one with: "
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)
API_KEY_MIN = 8
API_KEY_MAX = 512
MASK = "****"


class ProviderKeyError(MeteringError):
    """A stored provider key cannot be decrypted (tampered with, or not by these master keys)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderKeyView:
    """A provider key as it is listed: masked, never the key."""

    id: str
    tenant: str
    provider_type: ProviderType
    provider_name: str
    is_default: bool
    masked_key: str
    """`****` and the key's last 4 characters."""
    created_at: datetime


class KeyCipher:
    """Encrypts provider keys with the first of `master_keys` and decrypts with any of them.

    ValueError (MASTER_KEYS_HELP) for no master key or one that is not a Fernet key (32 bytes,
    URL-safe base64); the message never repeats the value.
    """

    def __init__(self, master_keys: Sequence[str]) -> None:
        keys = [k.strip() for k in master_keys if k.strip()]
        if not keys:
            raise ValueError(MASTER_KEYS_HELP)
        fernets = []
        for i, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise ValueError(f"master key #{i} is not a Fernet key: {MASTER_KEYS_HELP}") from None
        self._fernet = MultiFernet(fernets)
        self.key_count = len(fernets)

    @classmethod
    def parse(cls, value: str) -> KeyCipher:
        """From the setting's text: keys separated by commas or whitespace, the encrypting one first."""
        return cls(re.split(r"[,\s]+", value))

    def __repr__(self) -> str:
        return f"KeyCipher({self.key_count} master keys)"

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str, *, key_id: str) -> str:
        """ProviderKeyError naming `key_id` for a token altered or made by other master keys."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise ProviderKeyError(_undecryptable(key_id)) from None

    def rotate(self, token: str, *, key_id: str) -> str:
        """The token encrypted again with the first master key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError):
            raise ProviderKeyError(_undecryptable(key_id)) from None


def _undecryptable(key_id: str) -> str:
    return (
        f"provider key {key_id} cannot be decrypted: it was altered, or encrypted with a master "
        f"key that is not in {MASTER_KEYS_ENV}"
    )


def keyed_providers(provider_type: str) -> tuple[str, ...]:
    """The providers of a stage that take an `api_key` option (the embedded ones need none;
    Polly takes the AWS credential chain)."""
    if provider_type not in PROVIDER_TYPES:
        return ()
    names = []
    for name in PROVIDERS.names(provider_type):
        entry = PROVIDERS.entry(provider_type, name)
        config = entry.config_type
        if entry.embedded or config is None or not dataclasses.is_dataclass(config):
            continue
        if "api_key" in {f.name for f in dataclasses.fields(config)}:
            names.append(name)
    return tuple(names)


def check_provider(provider_type: str, provider_name: str) -> ProviderType:
    if provider_type not in PROVIDER_TYPES:
        raise ValueError(f"provider_type {provider_type!r}: give one of {', '.join(PROVIDER_TYPES)}")
    names = keyed_providers(provider_type)
    if provider_name not in names:
        raise ValueError(
            f"{provider_type} provider {provider_name!r} takes no API key "
            f"(providers with keys: {', '.join(names) or 'none'})"
        )
    return provider_type


def check_api_key(api_key: str) -> str:
    if not API_KEY_MIN <= len(api_key) <= API_KEY_MAX:
        raise ValueError(f"api_key is {len(api_key)} characters long: {API_KEY_MIN} to {API_KEY_MAX}")
    return api_key


def masked(last4: str) -> str:
    return MASK + last4
