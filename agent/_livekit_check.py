"""Place one real call through a LiveKit server and a running `voicerun worker`, end to end.

    livekit-server --dev                                   # devkey / secret, ws://127.0.0.1:7880
    LIVEKIT_URL=ws://127.0.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret voicerun worker
    python -m agent._livekit_check [--workflow front-desk] [--input CALLER.wav] [--timeout 30]

The check creates a room, joins it as the caller (an `AccessToken` with a room_join grant) and
publishes a microphone track, then dispatches the agent explicitly (`CreateDispatch` to
`--agent-name` with `{"workflow_slug": ..., "call_id": ...}`: joining first means the greeting is
heard from its first frame). When the agent's audio track arrives, the caller's recording plays
into the microphone, 48 kHz mono in 10 ms frames paced by the source in real time (the recording
starts as if the call had just been answered: the example's first 4.8 s are silence, room for
the greeting). It passes when, within `--timeout`:

* the agent's track carried at least SPEECH_MIN_MS of audio above SPEECH_DBFS (the greeting), and
* caption text streams on `lk.transcription` ended final (`lk.transcription_final: "true"`) for
  both the agent and the caller, told apart by `lk.transcribed_track_id` (the agent's own track,
  or the caller's microphone), every stream carrying `lk.segment_id`.

It prints a PASS/FAIL report with the timings from the moment it joined, deletes the room, and
exits 0 (PASS) or 1 (FAIL, or LiveKit unreachable or refusing the key: one line on stderr, no
traceback); 2 for bad arguments or an --input that cannot be played.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import aiohttp
import numpy as np
import numpy.typing as npt
import soundfile
import soxr
from livekit import api, rtc
from livekit.rtc.participant import PublishTrackError

__all__ = ["CheckError", "CheckOptions", "InputError", "Observations", "main", "room_frames", "run_check"]

ROOM_RATE = 48_000
FRAME_SAMPLES = ROOM_RATE // 100
"""10 ms at 48 kHz: the frame a LiveKit AudioSource ticks on."""
CAPTION_TOPIC = "lk.transcription"
ATTR_TRACK = "lk.transcribed_track_id"
ATTR_SEGMENT = "lk.segment_id"
ATTR_FINAL = "lk.transcription_final"
SPEECH_DBFS = -40.0
"""A 10 ms agent frame louder than this is speech: TTS voices sit around -20 dBFS, and silence
that went through two Opus codecs and a resampler stays below -70."""
SPEECH_MIN_MS = 300
"""Speech on the agent's track needed to call it a greeting, not a click or a codec burst."""
DEFAULT_TIMEOUT_S = 30.0
API_TIMEOUT_S = 10.0
"""One API request (CreateRoom, CreateDispatch); livekit-api's own default."""
JOIN_ATTEMPT_TIMEOUT_S = 5.0
"""One signal connection attempt of the rtc SDK (it makes three)."""
CLEANUP_TIMEOUT_S = 5.0
"""Leaving the room and deleting it; an empty room also goes away on its own (EMPTY_TIMEOUT_S)."""
EMPTY_TIMEOUT_S = 60
CALLER_IDENTITY = "voicerun-check-caller"
DEFAULT_INPUT = Path("workflows/examples/audio/front-desk-caller.wav")

Role = Literal["agent", "caller"]
T = TypeVar("T")


class CheckError(Exception):
    """The check could not place its call; the message is one line for the operator."""

    exit_status = 1


class InputError(CheckError):
    """The caller's recording cannot be played."""

    exit_status = 2


@dataclass(frozen=True, slots=True)
class CheckOptions:
    url: str
    api_key: str
    api_secret: str = field(repr=False)
    workflow: str = "front-desk"
    agent_name: str = "voicerun"
    timeout_s: float = DEFAULT_TIMEOUT_S


# -- pure helpers -------------------------------------------------------------------------------


def room_frames(path: Path, *, max_s: float | None = None) -> npt.NDArray[np.int16]:
    """The recording as the caller's microphone plays it: 48 kHz mono int16, one row per 10 ms
    frame (channels averaged, soxr's band-limited resampler, the last frame padded with silence).
    Only the first `max_s` seconds are read: the check never plays past its timeout."""
    if not path.is_file():
        raise InputError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        with soundfile.SoundFile(path) as f:
            frames = f.frames if max_s is None else min(f.frames, math.ceil(max_s * f.samplerate))
            audio = f.read(frames=frames, dtype="float32", always_2d=True)
            rate = f.samplerate
    except soundfile.LibsndfileError as exc:
        raise InputError(f"cannot play {path}: {exc.error_string}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if audio.shape[0] == 0:
        raise InputError(f"{path} has no audio")
    mono = audio.mean(axis=1, dtype=np.float32)
    resampled = soxr.resample(mono, rate, ROOM_RATE) if rate != ROOM_RATE else mono
    pcm = np.round(np.clip(resampled, -1.0, 1.0) * 32767).astype(np.int16)
    pcm = np.pad(pcm, (0, -len(pcm) % FRAME_SAMPLES))
    return pcm.reshape(-1, FRAME_SAMPLES)


def dbfs(samples: npt.NDArray[np.int16]) -> float:
    """RMS level of int16 samples in dB relative to full scale (-inf for digital silence)."""
    if samples.size == 0:
        return -math.inf
    rms = math.sqrt(float(np.mean(np.square(samples, dtype=np.float64)))) / 32768
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def dispatch_request(
    room: str, agent_name: str, workflow: str, call_id: str
) -> api.CreateAgentDispatchRequest:
    """The explicit dispatch the worker receives; its metadata is what `agent._dispatch` reads."""
    metadata = {"workflow_slug": workflow, "call_id": call_id, "metadata": {"source": "livekit-check"}}
    return api.CreateAgentDispatchRequest(agent_name=agent_name, room=room, metadata=json.dumps(metadata))


def caller_token(opts: CheckOptions, room: str) -> str:
    return (
        api.AccessToken(opts.api_key, opts.api_secret)
        .with_identity(CALLER_IDENTITY)
        .with_name("voicerun livekit-check")
        .with_grants(api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True))
        .to_jwt()
    )


@dataclass(slots=True)
class Caption:
    """One caption text stream: when it opened, who sent it, its text and final attributes."""

    opened_at: float
    sender: str
    text: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    ended: bool = False
    error: str | None = None

    @property
    def final(self) -> bool:
        return self.ended and self.attributes.get(ATTR_FINAL) == "true"


@dataclass
class Observations:
    """Everything the check saw, on the loop's clock; `missing()` and `problems()` are the verdict."""

    started_at: float
    room: str = ""
    call_id: str = ""
    joined_at: float | None = None
    caller_track_sid: str = ""
    dispatch_id: str = ""
    agent_identity: str = ""
    agent_joined_at: float | None = None
    agent_left_at: float | None = None
    agent_track_sids: set[str] = field(default_factory=set)
    agent_track_at: float | None = None
    caller_audio_at: float | None = None
    agent_audio_at: float | None = None
    agent_speech_ms: int = 0
    captions: list[Caption] = field(default_factory=list)
    disconnected: str | None = None
    task_errors: list[str] = field(default_factory=list)
    room_not_deleted: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def role(self, caption: Caption) -> Role | None:
        track = caption.attributes.get(ATTR_TRACK)
        if track and track == self.caller_track_sid:
            return "caller"
        if track and track in self.agent_track_sids:
            return "agent"
        return None

    def captions_of(self, role: Role) -> list[Caption]:
        return [c for c in self.captions if self.role(c) == role]

    def missing(self) -> list[str]:
        """What a passing call shows and this one has not (yet)."""
        out = []
        if self.agent_joined_at is None:
            out.append(f"no agent joined the room (dispatch {self.dispatch_id or 'not created'})")
        elif not self.agent_track_sids:
            out.append(f"the agent {self.agent_identity} published no audio track")
        elif self.agent_speech_ms < SPEECH_MIN_MS:
            out.append(
                f"no greeting on the agent's track: {self.agent_speech_ms} ms above {SPEECH_DBFS:g} dBFS,"
                f" {SPEECH_MIN_MS} needed"
            )
        for role in ("agent", "caller"):
            captions = self.captions_of(role)
            if not any(c.final for c in captions):
                seen = f" ({len(captions)} open, none final yet)" if captions else ""
                out.append(f"no final {role} caption on {CAPTION_TOPIC}{seen}")
        return out

    def problems(self) -> list[str]:
        """What makes the call fail however complete it is."""
        out = list(self.task_errors)
        no_track = sum(1 for c in self.captions if not c.attributes.get(ATTR_TRACK))
        if no_track:
            out.append(f"{no_track} caption stream(s) without {ATTR_TRACK}")
        unknown = sorted(
            {c.attributes[ATTR_TRACK] for c in self.captions if c.attributes.get(ATTR_TRACK)}
            - self.agent_track_sids
            - {self.caller_track_sid}
        )
        if unknown:
            out.append(
                f"caption stream(s) for tracks that are neither the agent's nor the caller's: {unknown}"
            )
        no_segment = sum(1 for c in self.captions if not c.attributes.get(ATTR_SEGMENT))
        if no_segment:
            out.append(f"{no_segment} caption stream(s) without {ATTR_SEGMENT}")
        out += [f"caption stream from {c.sender} failed: {c.error}" for c in self.captions if c.error]
        return out

    @property
    def passed(self) -> bool:
        return not self.missing() and not self.problems()

    @property
    def finished(self) -> bool:
        """Nothing more to wait for: complete, or the room or the agent is gone."""
        return not self.missing() or self.disconnected is not None or self.agent_left_at is not None

    def note(self) -> None:
        """Wake the waiter to look again."""
        self.changed.set()


def format_report(obs: Observations, opts: CheckOptions) -> str:
    verdict = "PASS" if obs.passed else "FAIL"
    lines = [
        f"livekit-check {verdict}: workflow {opts.workflow} through {opts.url}"
        f" (room {obs.room}, agent name {opts.agent_name}, call {obs.call_id})"
    ]
    joined = obs.joined_at

    def row(label: str, t: float | None, detail: str = "") -> None:
        when = f"{t - joined:7.2f} s after join" if t is not None and joined is not None else f"{'—':>7}"
        lines.append(f"  {label:<22}{when:<20}  {detail}".rstrip())

    if joined is not None:
        lines.append(f"  {'joined the room':<22}{joined - obs.started_at:7.2f} s after start")
    row("agent joined", obs.agent_joined_at, obs.agent_identity)
    row("agent audio track", obs.agent_track_at)
    row("caller audio started", obs.caller_audio_at)
    row("first agent audio", obs.agent_audio_at, f"{obs.agent_speech_ms / 1000:.1f} s of speech")
    for role in ("agent", "caller"):
        captions = obs.captions_of(role)
        final = next((c for c in captions if c.final), None)
        detail = f'{len(captions)} stream(s), first final: "{_short(final.text)}"' if final else ""
        row(f"first {role} caption", min((c.opened_at for c in captions), default=None), detail)
    if obs.agent_left_at is not None:
        row("the agent left", obs.agent_left_at)
    if obs.disconnected is not None:
        lines.append(f"  disconnected from the room: {obs.disconnected}")
    lines += [f"  problem: {problem}" for problem in obs.problems()]
    if not obs.finished:
        lines.append(f"  timed out after {opts.timeout_s:g} s")
    lines += [f"  missing: {item}" for item in obs.missing()]
    if obs.agent_joined_at is None:
        lines.append(
            f"  hint: is a `voicerun worker` with agent name {opts.agent_name!r} connected to {opts.url}?"
            " Its log says why it did not take the job."
        )
    if obs.room_not_deleted is not None:
        lines.append(
            f"  note: room {obs.room} was not deleted ({obs.room_not_deleted}); it closes when empty"
        )
    return "\n".join(lines)


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _scrub(text[0]) if text else type(exc).__name__


def _scrub(text: str) -> str:
    # The SDK's messages may quote the signal URL, whose query carries the caller's token.
    return re.sub(r"access_token=[^&\s\"']+", "access_token=…", text)


def _reason(exc: BaseException) -> str:
    """Why a connection failed, in the operating system's words where it has them."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if isinstance(err, socket.gaierror):
            return f"cannot resolve {exc.host}: {err.strerror}"
        if err.errno:
            return os.strerror(err.errno)
    return _first_line(exc)


# -- the call -----------------------------------------------------------------------------------


async def _api(url: str, what: str, request: Awaitable[T], deadline: float) -> T:
    """One LiveKit API request, its failure mapped to one CheckError line."""
    try:
        async with asyncio.timeout_at(deadline):
            return await request
    except api.ServerError as exc:
        if exc.status == 401:
            raise CheckError(
                f"LiveKit at {url} refused the API key and secret (HTTP 401 on {what}): check"
                " LIVEKIT_API_KEY and LIVEKIT_API_SECRET (--api-key, --api-secret)"
            ) from exc
        if exc.status == 404:
            raise CheckError(
                f"{url} does not answer like a LiveKit server: HTTP 404 on {what}"
                " (the URL should name the server's own port, 7880 by default)"
            ) from exc
        detail = f": {exc.message}" if exc.message else ""
        raise CheckError(f"LiveKit at {url} refused {what}: HTTP {exc.status} {exc.code}{detail}") from exc
    except TimeoutError as exc:
        raise CheckError(f"cannot reach LiveKit at {url}: no answer to {what}") from exc
    except aiohttp.ClientError as exc:
        raise CheckError(f"cannot reach LiveKit at {url}: {_reason(exc)}") from exc


class _Session:
    """The caller's side of the call: owns the feeder, the ear on the agent's track and the
    caption readers (each a task, cancelled and awaited by `aclose()`), and records what they
    see in `obs`."""

    def __init__(self, obs: Observations, frames: npt.NDArray[np.int16], source: rtc.AudioSource) -> None:
        self.obs = obs
        self._frames = frames
        self._source = source
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        self._feeding = False

    def _spawn(self, name: str, work: Callable[[], Awaitable[None]]) -> None:
        async def guarded() -> None:
            try:
                await work()
            except Exception as exc:  # top of a task: report it in the verdict
                self.obs.task_errors.append(f"{name} failed: {_first_line(exc)}")
                self.obs.note()

        task = self._loop.create_task(guarded(), name=f"livekit-check {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- room events (called by the SDK's listener, on the loop) --

    def on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        # The room is this check's own: whoever joins it came from the dispatch.
        if self.obs.agent_joined_at is None:
            self.obs.agent_joined_at = self._loop.time()
            self.obs.agent_identity = participant.identity
            self.obs.note()

    def on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self.obs.agent_identity and self.obs.agent_left_at is None:
            self.obs.agent_left_at = self._loop.time()
            self.obs.note()

    def on_track_published(self, publication: rtc.RemoteTrackPublication, _: rtc.RemoteParticipant) -> None:
        if publication.kind == rtc.TrackKind.KIND_AUDIO:
            self.obs.agent_track_sids.add(publication.sid)
            self.obs.note()

    def on_track_subscribed(
        self, track: rtc.Track, publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
    ) -> None:
        if track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        self.on_participant_connected(participant)  # a participant present before we joined
        self.obs.agent_track_sids.add(publication.sid)
        if self.obs.agent_track_at is None:
            self.obs.agent_track_at = self._loop.time()
        self._spawn(f"agent audio {publication.sid}", lambda: self._listen(track))
        if not self._feeding:
            self._feeding = True
            self._spawn("caller audio", self._feed)
        self.obs.note()

    def on_caption(self, reader: rtc.TextStreamReader, sender: str) -> None:
        caption = Caption(
            opened_at=self._loop.time(), sender=sender, attributes=dict(reader.info.attributes or {})
        )
        self.obs.captions.append(caption)
        self._spawn(f"caption from {sender}", lambda: self._read(reader, caption))
        self.obs.note()

    def on_disconnected(self, reason: rtc.DisconnectReason.ValueType) -> None:
        try:
            self.obs.disconnected = rtc.DisconnectReason.Name(reason)
        except ValueError:  # a reason newer than this SDK's enum
            self.obs.disconnected = f"reason {reason}"
        self.obs.note()

    # -- tasks --

    async def _feed(self) -> None:
        self.obs.caller_audio_at = self._loop.time()
        for row in self._frames:
            # capture_frame returns once the source's 1 s queue has room: the source sets the pace.
            await self._source.capture_frame(rtc.AudioFrame(row.tobytes(), ROOM_RATE, 1, FRAME_SAMPLES))

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, loop=self._loop, sample_rate=ROOM_RATE, num_channels=1)
        try:
            async for event in stream:
                frame = event.frame
                if dbfs(np.frombuffer(frame.data, dtype=np.int16)) > SPEECH_DBFS:
                    if self.obs.agent_audio_at is None:
                        self.obs.agent_audio_at = self._loop.time()
                    self.obs.agent_speech_ms += round(1000 * frame.samples_per_channel / frame.sample_rate)
                    if self.obs.agent_speech_ms >= SPEECH_MIN_MS:
                        self.obs.note()
        finally:
            await stream.aclose()

    async def _read(self, reader: rtc.TextStreamReader, caption: Caption) -> None:
        try:
            async for chunk in reader:
                caption.text += chunk
        except rtc.StreamError as exc:
            caption.error = exc.description
        finally:
            reader.close()
            caption.attributes = dict(reader.info.attributes or {})  # the final flag comes at the end
            caption.ended = caption.error is None
            self.obs.note()


async def run_check(opts: CheckOptions, frames: npt.NDArray[np.int16]) -> Observations:
    """Place the call and watch it until it passes, the room or the agent goes away, or
    `opts.timeout_s` passes. Raises CheckError when LiveKit cannot be reached or refuses."""
    loop = asyncio.get_running_loop()
    suffix = secrets.token_hex(4)
    obs = Observations(
        started_at=loop.time(),
        room=f"voicerun-check-{suffix}",
        call_id=f"livekit-check-{suffix}",
    )
    deadline = obs.started_at + opts.timeout_s
    lkapi = api.LiveKitAPI(
        opts.url, opts.api_key, opts.api_secret, timeout=aiohttp.ClientTimeout(total=API_TIMEOUT_S)
    )
    try:
        create = api.CreateRoomRequest(name=obs.room, empty_timeout=EMPTY_TIMEOUT_S)
        await _api(opts.url, "CreateRoom", lkapi.room.create_room(create), deadline)
        try:
            await _call(opts, frames, obs, lkapi, deadline)
        finally:
            try:
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    await lkapi.room.delete_room(api.DeleteRoomRequest(room=obs.room))
            except (api.ServerError, aiohttp.ClientError, TimeoutError) as exc:
                obs.room_not_deleted = _reason(exc) if not isinstance(exc, TimeoutError) else "no answer"
    finally:
        await lkapi.aclose()
    return obs


async def _call(
    opts: CheckOptions,
    frames: npt.NDArray[np.int16],
    obs: Observations,
    lkapi: api.LiveKitAPI,
    deadline: float,
) -> None:
    loop = asyncio.get_running_loop()
    room = rtc.Room(loop=loop)
    source = rtc.AudioSource(ROOM_RATE, 1, loop=loop)
    session = _Session(obs, frames, source)
    # Handlers go on before connecting, so nothing that happens while joining is missed.
    room.on("participant_connected", session.on_participant_connected)
    room.on("participant_disconnected", session.on_participant_disconnected)
    room.on("track_published", session.on_track_published)
    room.on("track_subscribed", session.on_track_subscribed)
    room.on("disconnected", session.on_disconnected)
    room.register_text_stream_handler(CAPTION_TOPIC, session.on_caption)
    rtc_url = "ws" + opts.url[4:] if opts.url.startswith("http") else opts.url
    try:
        try:
            async with asyncio.timeout_at(deadline):
                await room.connect(
                    rtc_url,
                    caller_token(opts, obs.room),
                    rtc.RoomOptions(auto_subscribe=True, connect_timeout=JOIN_ATTEMPT_TIMEOUT_S),
                )
        except rtc.ConnectError as exc:
            raise CheckError(f"cannot join room {obs.room} at {opts.url}: {_scrub(exc.message)}") from exc
        except TimeoutError as exc:
            raise CheckError(f"cannot join room {obs.room} at {opts.url}: no answer") from exc
        obs.joined_at = loop.time()
        track = rtc.LocalAudioTrack.create_audio_track("caller-microphone", source)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        try:
            async with asyncio.timeout_at(deadline):
                publication = await room.local_participant.publish_track(track, options)
        except TimeoutError as exc:
            raise CheckError(f"cannot publish the caller's microphone in room {obs.room}: no answer") from exc
        except PublishTrackError as exc:
            raise CheckError(
                f"cannot publish the caller's microphone in room {obs.room}: {exc.message}"
            ) from exc
        obs.caller_track_sid = publication.sid
        request = dispatch_request(obs.room, opts.agent_name, opts.workflow, obs.call_id)
        dispatch = await _api(
            opts.url, "CreateDispatch", lkapi.agent_dispatch.create_dispatch(request), deadline
        )
        obs.dispatch_id = dispatch.id
        try:
            async with asyncio.timeout_at(deadline):
                while not obs.finished:
                    obs.changed.clear()
                    await obs.changed.wait()
        except TimeoutError:
            pass  # the report says what was still missing
    finally:
        room.off("disconnected", session.on_disconnected)  # leaving is ours, not a finding
        await session.aclose()
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await room.disconnect()
        except TimeoutError:
            pass  # deleting the room disconnects it anyway
        await source.aclose()


# -- command line -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="voicerun livekit-check",
        description="Place one real call through LiveKit and a running `voicerun worker`: the agent's "
        "greeting must be heard and captions must arrive for both sides. Exit 0 PASS, 1 FAIL.",
    )
    p.add_argument(
        "--url", default=env("LIVEKIT_URL") or "ws://127.0.0.1:7880", help="LiveKit server (env LIVEKIT_URL)"
    )
    p.add_argument("--api-key", default=env("LIVEKIT_API_KEY") or "devkey", help="env LIVEKIT_API_KEY")
    p.add_argument(
        "--api-secret", default=env("LIVEKIT_API_SECRET") or "secret", help="env LIVEKIT_API_SECRET"
    )
    p.add_argument("--workflow", default="front-desk", metavar="SLUG", help="the workflow the worker runs")
    p.add_argument(
        "--input", type=Path, metavar="CALLER.wav", help=f"what the caller says (default {DEFAULT_INPUT})"
    )
    p.add_argument(
        "--agent-name",
        default=env("VOICERUN_AGENT_NAME") or "voicerun",
        help="the worker's agent name (env VOICERUN_AGENT_NAME)",
    )
    p.add_argument(
        "--timeout", type=_positive, default=DEFAULT_TIMEOUT_S, metavar="S", help="seconds to wait in all"
    )
    p.add_argument("--verbose", action="store_true", help="show the LiveKit SDK's own warnings")
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _default_input() -> Path:
    if DEFAULT_INPUT.exists():
        return DEFAULT_INPUT
    beside_package = Path(__file__).resolve().parents[1] / DEFAULT_INPUT  # a source checkout
    return beside_package if beside_package.exists() else DEFAULT_INPUT


@contextmanager
def _quiet_sdk(verbose: bool) -> Iterator[None]:
    """The SDK logs every retry of a failed join (through the `livekit` logger) and PyJWT warns
    that `secret`, the dev server's secret, is short: the check's own lines say what matters."""
    logger = logging.getLogger("livekit")
    level = logger.level
    with warnings.catch_warnings():
        if not verbose:
            logger.setLevel(logging.CRITICAL)
            warnings.filterwarnings("ignore", message="The HMAC key is .* bytes long")
        try:
            yield
        finally:
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    opts = CheckOptions(
        url=args.url,
        api_key=args.api_key,
        api_secret=args.api_secret,
        workflow=args.workflow,
        agent_name=args.agent_name,
        timeout_s=args.timeout,
    )
    with _quiet_sdk(args.verbose):
        try:
            frames = room_frames(args.input or _default_input(), max_s=opts.timeout_s)
            obs = asyncio.run(run_check(opts, frames))
        except CheckError as exc:
            print(f"livekit-check: {exc}", file=sys.stderr)
            return exc.exit_status
    print(format_report(obs, opts))
    return 0 if obs.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
