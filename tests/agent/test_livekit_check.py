"""`python -m agent._livekit_check` without a LiveKit server: its failures are one line and exit 1
within the timeout, the room it made is deleted, and its pieces (the caller's frames, the ear on
the agent's track, the caption readers, the verdict) do what the real call relies on.

The call itself needs `livekit-server --dev` and a `voicerun worker` (`make livekit-check`).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fakes.livekit_server import FakeLiveKitServer
from livekit import rtc

from agent import _livekit_check as check
from agent._dispatch import Dispatch

HANG_S = 10.0
"""Bounds a hang only."""


def write_wav(path: Path, audio: np.ndarray, rate: int) -> Path:
    soundfile.write(path, audio, rate, subtype="PCM_16")
    return path


def tone(freq_hz: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def caller_wav(tmp_path: Path) -> Path:
    return write_wav(tmp_path / "caller.wav", tone(440, 0.2, 16_000), 16_000)


# -- one line, exit 1 ---------------------------------------------------------------------------


def test_an_unreachable_server_is_one_line_and_exit_1_within_the_timeout(
    closed_port: int, caller_wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"ws://127.0.0.1:{closed_port}"
    started = time.monotonic()
    status = check.main(["--url", url, "--input", str(caller_wav), "--timeout", "5"])
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.splitlines() == [f"livekit-check: cannot reach LiveKit at {url}: Connection refused"]
    assert elapsed < 5


async def test_refused_credentials_name_the_variables_and_never_the_secret(
    caller_wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "not-the-servers-secret-but-long-enough"
    async with FakeLiveKitServer() as lk:
        argv = ["--url", lk.url, "--api-key", lk.api_key, "--api-secret", secret, "--input", str(caller_wav)]
        status = await asyncio.to_thread(check.main, argv)
        assert [r.status for r in lk.refusals] == [401]
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    [line] = err.splitlines()
    assert "refused the API key and secret (HTTP 401 on CreateRoom)" in line
    assert "LIVEKIT_API_KEY" in line and "LIVEKIT_API_SECRET" in line and secret not in line


async def test_a_room_that_cannot_be_joined_is_deleted_and_no_agent_is_dispatched(
    caller_wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The fake answers the API but has no RTC signalling: creating the room works, joining fails.
    async with FakeLiveKitServer() as lk:
        argv = ["--url", lk.url, "--api-key", lk.api_key, "--api-secret", lk.api_secret]
        status = await asyncio.to_thread(check.main, [*argv, "--input", str(caller_wav), "--timeout", "5"])
        created = [c.request.name for c in lk.calls_to("CreateRoom")]  # type: ignore[union-attr]
        assert [r.name for r in lk.deleted_rooms] == created and len(created) == 1
        assert lk.calls_to("CreateDispatch") == [] and lk.jobs == []
    out, err = capsys.readouterr()
    assert status == 1 and out == ""
    [line] = err.splitlines()
    assert line.startswith(f"livekit-check: cannot join room {created[0]} at {lk.url}: ")
    assert "access_token=" not in line or "access_token=…" in line


def test_an_input_that_cannot_be_played_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not a wav")
    assert check.main(["--input", str(not_audio), "--url", "ws://127.0.0.1:1"]) == 2
    assert check.main(["--input", str(tmp_path / "missing.wav")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"livekit-check: cannot play {not_audio}: Format not recognised.",
        f"livekit-check: {tmp_path / 'missing.wav'}: no such file",
    ]


# -- the caller's audio -------------------------------------------------------------------------


def test_a_wav_becomes_48_khz_mono_10_ms_frames(tmp_path: Path) -> None:
    left, right = tone(1000, 0.105, 16_000, 0.5), tone(1000, 0.105, 16_000, 0.3)
    path = write_wav(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 16_000)
    frames = check.room_frames(path)
    assert frames.dtype == np.int16 and frames.shape == (11, check.FRAME_SAMPLES)
    pcm = frames.reshape(-1)
    assert np.all(pcm[round(0.105 * check.ROOM_RATE) + 48 :] == 0)  # the last frame padded with silence
    body = pcm[4_800 : 4_800 + 2_400].astype(np.float64)  # 50 ms well inside, past the filter's edge
    spectrum = np.abs(np.fft.rfft(body * np.hanning(len(body))))
    assert np.argmax(spectrum) * check.ROOM_RATE / len(body) == pytest.approx(1000, abs=20)
    # channels averaged: amplitude (0.5 + 0.3) / 2 of full scale
    assert np.abs(body).max() / 32767 == pytest.approx(0.4, abs=0.01)


def test_a_48_khz_wav_is_only_cut_into_frames_and_max_s_bounds_what_is_read(tmp_path: Path) -> None:
    audio = tone(300, 2.0, 48_000, 0.25)
    path = write_wav(tmp_path / "room.wav", audio, 48_000)
    frames = check.room_frames(path, max_s=0.5)
    assert frames.shape == (50, check.FRAME_SAMPLES)
    expected = np.round(audio[:24_000] * 32767).astype(np.int16)
    assert np.abs(frames.reshape(-1).astype(np.int32) - expected).max() <= 1  # 16-bit file rounding


def test_levels_in_dbfs() -> None:
    full = np.round(np.sin(2 * np.pi * np.arange(480) / 48) * 32767).astype(np.int16)
    assert check.dbfs(full) == pytest.approx(-3.01, abs=0.01)
    assert check.dbfs((full // 100).astype(np.int16)) == pytest.approx(-43.0, abs=0.1)
    assert check.dbfs(np.zeros(480, np.int16)) == -math.inf
    assert check.dbfs(np.zeros(0, np.int16)) == -math.inf


def test_the_dispatch_metadata_is_what_the_worker_parses() -> None:
    request = check.dispatch_request("voicerun-check-1", "voicerun", "front-desk", "livekit-check-1")
    assert (request.agent_name, request.room) == ("voicerun", "voicerun-check-1")
    dispatch = Dispatch.parse(request.metadata)
    assert (dispatch.workflow_slug, dispatch.call_id) == ("front-desk", "livekit-check-1")
    assert json.loads(request.metadata)["workflow_slug"] == "front-desk"


# -- the session: ear, feeder, captions, verdict ------------------------------------------------


@dataclass
class FakePublication:
    sid: str
    kind: int = rtc.TrackKind.KIND_AUDIO


@dataclass
class FakeParticipant:
    identity: str


@dataclass
class FakeInfo:
    attributes: dict[str, str]


@dataclass
class FakeReader:
    """A caption text stream: chunks, then the attributes its end adds (as TextStreamReader)."""

    chunks: list[str]
    opening: dict[str, str]
    closing: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def __post_init__(self) -> None:
        self.info = FakeInfo(dict(self.opening))

    async def _stream(self) -> AsyncIterator[str]:
        for chunk in self.chunks:
            yield chunk
        self.info.attributes.update(self.closing)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._stream()

    def close(self) -> None:
        self.closed = True


async def until(obs: check.Observations, predicate: object) -> None:
    assert callable(predicate)
    async with asyncio.timeout(HANG_S):
        while not predicate():
            obs.changed.clear()
            await obs.changed.wait()


async def test_the_ear_hears_the_greeting_through_a_real_rtc_audio_path() -> None:
    # The caller's feeder plays into a real AudioSource; its track, heard by the session's ear
    # (a real AudioStream, loopback without a room), stands in for the agent's greeting.
    loop = asyncio.get_running_loop()
    greeting = np.concatenate([tone(300, 0.1, 48_000, 0.0), tone(300, 0.4, 48_000, 0.3)])
    frames = np.round(greeting * 32767).astype(np.int16).reshape(-1, check.FRAME_SAMPLES)
    obs = check.Observations(started_at=loop.time(), joined_at=loop.time())
    source = rtc.AudioSource(check.ROOM_RATE, 1, loop=loop)
    session = check._Session(obs, frames, source)
    track = rtc.LocalAudioTrack.create_audio_track("greeting", source)
    try:
        session.on_track_subscribed(track, FakePublication("TR_agent"), FakeParticipant("agent-AJ_1"))  # type: ignore[arg-type]
        await until(obs, lambda: obs.agent_speech_ms >= check.SPEECH_MIN_MS)
    finally:
        await session.aclose()
        await source.aclose()
    assert obs.agent_identity == "agent-AJ_1" and obs.agent_track_sids == {"TR_agent"}
    assert obs.caller_audio_at is not None and obs.agent_audio_at is not None
    assert obs.agent_audio_at - obs.caller_audio_at >= 0.09  # the 100 ms of leading silence is not speech
    assert obs.task_errors == []


async def test_captions_are_told_apart_by_track_and_pass_once_final_for_both() -> None:
    loop = asyncio.get_running_loop()
    obs = check.Observations(started_at=loop.time(), joined_at=loop.time())
    obs.caller_track_sid, obs.agent_track_sids = "TR_caller", {"TR_agent"}
    obs.agent_joined_at, obs.agent_identity, obs.agent_speech_ms = loop.time(), "agent-AJ_1", 2_000
    source = rtc.AudioSource(check.ROOM_RATE, 1, loop=loop)  # never fed: no agent track here
    session = check._Session(obs, np.zeros((0, check.FRAME_SAMPLES), np.int16), source)
    agent = {check.ATTR_TRACK: "TR_agent", check.ATTR_SEGMENT: "SG_1", check.ATTR_FINAL: "false"}
    caller = {check.ATTR_TRACK: "TR_caller", check.ATTR_SEGMENT: "SG_2", check.ATTR_FINAL: "false"}
    readers = [
        FakeReader(["Thanks for calling ", "Luigi's."], agent, {check.ATTR_FINAL: "true"}),
        FakeReader(["what time"], caller),  # an interim transcript: not final
    ]
    try:
        for reader in readers:
            session.on_caption(reader, "agent-AJ_1")  # type: ignore[arg-type]
        await until(obs, lambda: all(c.ended for c in obs.captions))
        assert obs.missing() == ["no final caller caption on lk.transcription (1 open, none final yet)"]
        assert not obs.finished
        final = FakeReader(["What time do you open?"], {**caller, check.ATTR_FINAL: "true"})
        session.on_caption(final, "voicerun-check-caller")  # type: ignore[arg-type]
        await until(obs, lambda: obs.finished)
    finally:
        await session.aclose()
        await source.aclose()
    assert obs.passed and obs.problems() == []
    assert [c.text for c in obs.captions_of("agent")] == ["Thanks for calling Luigi's."]
    assert [c.text for c in obs.captions_of("caller") if c.final] == ["What time do you open?"]
    assert all(r.closed for r in [*readers, final])


def test_captions_without_the_contracts_attributes_fail_the_check() -> None:
    obs = check.Observations(started_at=0.0, joined_at=0.1, caller_track_sid="TR_caller")
    obs.agent_joined_at, obs.agent_identity, obs.agent_track_sids, obs.agent_speech_ms = (
        1.0,
        "a",
        {"TR_a"},
        900,
    )
    for attributes in (
        {check.ATTR_TRACK: "TR_a", check.ATTR_SEGMENT: "S1", check.ATTR_FINAL: "true"},
        {check.ATTR_TRACK: "TR_caller", check.ATTR_SEGMENT: "S2", check.ATTR_FINAL: "true"},
        {check.ATTR_FINAL: "true"},
        {check.ATTR_TRACK: "TR_other", check.ATTR_SEGMENT: "S3"},
    ):
        obs.captions.append(
            check.Caption(opened_at=2.0, sender="a", text="hi", attributes=attributes, ended=True)
        )
    assert obs.missing() == []
    assert obs.problems() == [
        "1 caption stream(s) without lk.transcribed_track_id",
        "caption stream(s) for tracks that are neither the agent's nor the caller's: ['TR_other']",
        "1 caption stream(s) without lk.segment_id",
    ]
    assert not obs.passed


def test_the_report_gives_timings_from_the_join_and_says_what_is_missing() -> None:
    opts = check.CheckOptions(url="ws://127.0.0.1:7880", api_key="devkey", api_secret="secret", timeout_s=30)
    obs = check.Observations(started_at=100.0, room="voicerun-check-1", call_id="livekit-check-1")
    obs.joined_at, obs.dispatch_id = 100.25, "AD_1"
    failed = check.format_report(obs, opts)
    assert failed.splitlines()[0].startswith(
        "livekit-check FAIL: workflow front-desk through ws://127.0.0.1:7880"
    )
    assert "  joined the room          0.25 s after start" in failed
    assert "  missing: no agent joined the room (dispatch AD_1)" in failed
    assert "  timed out after 30 s" in failed and "agent name 'voicerun'" in failed
    assert "secret" not in failed.replace("--api-secret", "")

    obs.agent_joined_at, obs.agent_identity, obs.agent_track_sids = 101.25, "agent-AJ_1", {"TR_a"}
    obs.caller_track_sid, obs.agent_audio_at, obs.agent_speech_ms = "TR_c", 101.75, 2_400
    for at, track, text in (
        (101.5, "TR_a", "Thanks for calling."),
        (108.0, "TR_c", "What time do you open?"),
    ):
        attributes = {check.ATTR_TRACK: track, check.ATTR_SEGMENT: "S", check.ATTR_FINAL: "true"}
        obs.captions.append(
            check.Caption(opened_at=at, sender="x", text=text, attributes=attributes, ended=True)
        )
    passed = check.format_report(obs, opts)
    assert passed.splitlines()[0].startswith("livekit-check PASS")
    assert "  first agent audio        1.50 s after join  2.4 s of speech" in passed
    assert (
        '  first agent caption      1.25 s after join  1 stream(s), first final: "Thanks for calling."'
        in passed
    )
    assert "  first caller caption     7.75 s after join" in passed
    assert "missing" not in passed and "timed out" not in passed
