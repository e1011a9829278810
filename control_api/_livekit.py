"""What the API asks of LiveKit, through livekit-api: a room with the agent dispatched to it,
a caller's token, and ending a call."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from livekit import api

END_REASON_KEY = "voicerun.end_reason"
"""The worker ends a call whose room's metadata names a reason here (agent/_room_call.py)."""


@dataclass(frozen=True)
class LiveKitConfig:
    url: str
    """ws:// or wss://: what callers connect to (and the API, over http(s))."""
    api_key: str
    api_secret: str
    agent_name: str = "voicerun"
    token_ttl: timedelta = timedelta(hours=1)
    sip_trunk_id: str | None = None
    """The outbound trunk dialled calls go through (LiveKit SIP); None: dialling is off."""


class LiveKitCalls:
    def __init__(self, config: LiveKitConfig) -> None:
        self.config = config
        self._api: api.LiveKitAPI | None = None

    def _client(self) -> api.LiveKitAPI:
        if self._api is None:
            url = self.config.url
            http = "http" + url[2:] if url.startswith("ws") else url
            self._api = api.LiveKitAPI(http, self.config.api_key, self.config.api_secret)
        return self._api

    async def start(self, room: str, metadata: dict[str, Any]) -> None:
        """The room, and the agent dispatched into it with the job metadata the worker checks."""
        lk = self._client()
        await lk.room.create_room(api.CreateRoomRequest(name=room, empty_timeout=300, departure_timeout=20))
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=self.config.agent_name, room=room, metadata=json.dumps(metadata)
            )
        )

    async def dial(
        self, room: str, metadata: dict[str, Any], *, to: str, from_: str, max_duration_s: int
    ) -> None:
        """Start a call (room and agent, as start()) and have LiveKit SIP ring `to` into it; the
        worker waits for the answer (sip.callStatus) and records no-answer and busy."""
        assert self.config.sip_trunk_id is not None
        await self.start(room, metadata)
        limit = Duration()
        limit.FromTimedelta(timedelta(seconds=max_duration_s))
        await self._client().sip.create_sip_participant(
            api.CreateSIPParticipantRequest(
                sip_trunk_id=self.config.sip_trunk_id,
                sip_call_to=to,
                sip_number=from_,
                room_name=room,
                participant_identity=f"phone-{to.lstrip('+')}",
                participant_name=to,
                play_dialtone=False,
                max_call_duration=limit,
            )
        )

    def caller_token(self, room: str, identity: str) -> str:
        return (
            api.AccessToken(self.config.api_key, self.config.api_secret)
            .with_identity(identity)
            .with_ttl(self.config.token_ttl)
            .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
            .to_jwt()
        )

    async def end(self, room: str, reason: str) -> None:
        """Name the reason in the room's metadata (the worker ends the call with it), then delete
        the room. A room already gone is not an error: ending is idempotent."""
        lk = self._client()
        try:
            await lk.room.update_room_metadata(
                api.UpdateRoomMetadataRequest(room=room, metadata=json.dumps({END_REASON_KEY: reason}))
            )
            await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        except api.TwirpError as exc:
            if exc.status != 404:
                raise

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.aclose()
