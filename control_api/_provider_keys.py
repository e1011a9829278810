"""/api/v1/provider-keys: a tenant's own provider keys (BYOK), encrypted at rest by the ledger
with the master keys (VOICERUN_MASTER_KEYS); listed masked, never read back."""

from __future__ import annotations

from datetime import UTC
from typing import Literal

from aiohttp import web
from pydantic import Field, SecretStr

from metering import MASTER_KEYS_ENV, KeyCipher, Ledger, ProviderKeyView

from ._calls import answer, body_of
from ._errors import TENANT, ApiError
from ._models import Request, Response
from ._openapi import ApiRoute


class CreateProviderKey(Request):
    provider_type: Literal["stt", "llm", "tts"] = Field(description="The stage the key is for")
    provider_name: str = Field(min_length=1, max_length=64, description="e.g. deepgram, openai")
    api_key: SecretStr = Field(
        min_length=8, max_length=512, description="Stored encrypted; never shown again (only its last 4)"
    )
    is_default: bool = Field(default=False, description="Replaces the tenant's default key of this stage")


class ProviderKey(Response):
    id: str
    provider_type: str
    provider_name: str
    is_default: bool
    masked_key: str = Field(description="**** and the key's last 4 characters")
    created_at: str


class ProviderKeyList(Response):
    items: list[ProviderKey]


def _item(v: ProviderKeyView) -> ProviderKey:
    return ProviderKey(
        id=v.id,
        provider_type=v.provider_type,
        provider_name=v.provider_name,
        is_default=v.is_default,
        masked_key=v.masked_key,
        created_at=v.created_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


class ProviderKeyRoutes:
    """cipher: encrypts and decrypts the keys (None: no master key is configured, and every
    route answers 409)."""

    def __init__(self, ledger: Ledger, cipher: KeyCipher | None) -> None:
        self.ledger = ledger
        self.cipher = cipher

    def routes(self) -> list[ApiRoute]:
        tags = ("provider-keys",)
        return [
            ApiRoute("GET", "/api/v1/provider-keys", self.list, "The tenant's provider keys, masked",
                     ProviderKeyList, errors=(401, 409, 429), tags=tags),
            ApiRoute("POST", "/api/v1/provider-keys", self.create, "Add a provider key", ProviderKey,
                     body=CreateProviderKey, status=201, errors=(400, 401, 409, 413, 415, 422, 429), tags=tags),
            ApiRoute("DELETE", "/api/v1/provider-keys/{id}", self.delete, "Delete a provider key", None,
                     status=204, errors=(401, 404, 409, 429), tags=tags),
        ]  # fmt: skip

    def _on(self) -> KeyCipher:
        if self.cipher is None:
            raise ApiError(409, f"provider keys are off: set {MASTER_KEYS_ENV}")
        return self.cipher

    async def list(self, request: web.Request) -> web.Response:
        self._on()
        views = await self.ledger.provider_keys(request[TENANT])
        return answer(ProviderKeyList(items=[_item(v) for v in views]))

    async def create(self, request: web.Request) -> web.Response:
        cipher = self._on()
        body: CreateProviderKey = await body_of(request, CreateProviderKey)
        try:
            view = await self.ledger.create_provider_key(
                request[TENANT],
                body.provider_type,
                body.provider_name,
                body.api_key.get_secret_value(),
                is_default=body.is_default,
                cipher=cipher,
            )
        except ValueError as exc:
            raise ApiError(
                422, "invalid request", [{"field": "provider_name", "message": str(exc)}]
            ) from None
        return answer(_item(view), 201)

    async def delete(self, request: web.Request) -> web.Response:
        self._on()
        if not await self.ledger.delete_provider_key(request.match_info["id"], tenant=request[TENANT]):
            raise ApiError(404, "no such provider key")
        return web.Response(status=204)
