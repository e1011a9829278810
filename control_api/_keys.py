"""Which tenant an API key acts for, remembered for a few seconds: every request carries its
key, and asking the database each time would double the round trips of a status poll."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from cachetools import TTLCache

from metering import Ledger

KEY_CACHE_SECONDS = 10.0
"""How long a key's tenant is remembered: a key revoked elsewhere stops working within this."""


class KeyTenants:
    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_s: float = KEY_CACHE_SECONDS,
        size: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ledger = ledger
        # Keyed by a digest, so the process keeps no key it was sent longer than the request.
        self._known: TTLCache[bytes, str] = TTLCache(maxsize=size, ttl=ttl_s, timer=timer)

    async def tenant(self, key: str) -> str | None:
        """The key's tenant; None for a key unknown or revoked. Refusals are not remembered: a
        key created a moment after a failed attempt works at once."""
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        tenant = self._known.get(digest)
        if tenant is None:
            tenant = await self.ledger.api_key_tenant(key)
            if tenant is not None:
                self._known[digest] = tenant
        return tenant
