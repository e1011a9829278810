"""A call's recording: both sides on one timeline, encoded, and kept in a local directory or on a
real S3-compatible server (moto's, on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from agent._call_recording import CallRecorder, encode_recording, recording_key, save_recording
from agent._recording_store import (
    LocalRecordingStore,
    RecordingStoreError,
    S3RecordingStore,
    recording_store,
)
from pipeline import (
    FRAME_S,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    BufferedSink,
    Int16Array,
    Playout,
    VirtualClock,
    frames,
)
from pipeline._playout import SegmentStats


@pytest.fixture
async def clock() -> AsyncIterator[VirtualClock]:
    clock = VirtualClock()
    clock.start()
    yield clock
    await clock.aclose()


def chirp(seconds: float, f0: float = 300.0, f1: float = 3000.0) -> Int16Array:
    """A sweep: unlike a steady tone, it matches itself at one lag only."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds))
    return (0.3 * 32767 * np.sin(phase)).astype(np.int16)


def tone(hz: float, seconds: float, rate: int = SAMPLE_RATE) -> Int16Array:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def lag(x: Int16Array, y: Int16Array) -> int:
    """Samples by which y is x delayed: the peak of their cross-correlation."""
    n = len(x) + len(y)
    c = np.fft.irfft(np.fft.rfft(y.astype(float), n) * np.conj(np.fft.rfft(x.astype(float), n)), n)
    k = int(np.argmax(c))
    return k if k < len(y) else k - n


def rms(x: Int16Array) -> float:
    return float(np.sqrt(np.mean(x.astype(float) ** 2)))


async def paced(audio: Int16Array, clock: VirtualClock, start: float) -> AsyncIterator[tuple[bytes, float]]:
    """A transport: each frame stamped when it finished arriving, its audio beginning at `start`."""
    for k, frame in enumerate(frames(audio)):
        arrived = start + (k + 1) * FRAME_S
        await clock.sleep_until(arrived)
        yield frame, arrived


class ListSink:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, float]] = []

    async def send(self, pcm: bytes, t: float) -> None:
        self.sent.append((pcm, t))


class RoomLikeSink(ListSink):
    """A BufferedSink with a transport attribute of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.source = "the room's audio source"

    def pause(self) -> None:
        self.calls.append("pause")

    def resume(self) -> None:
        self.calls.append("resume")

    def clear(self) -> None:
        self.calls.append("clear")


# -- capture -------------------------------------------------------------------------------------


async def test_agent_audio_lands_where_it_played_relative_to_the_caller(clock: VirtualClock) -> None:
    recorder = CallRecorder(clock)  # the call starts now, at 0
    burst = chirp(0.3)
    caller_audio = np.zeros(3 * SAMPLE_RATE, np.int16)
    caller_audio[8000 : 8000 + len(burst)] = burst  # 0.5 s into the caller's audio
    caller_lead_s, reply_at = 0.3, 1.37  # the caller's audio begins 0.3 s into the call
    sink = ListSink()
    playout = Playout(clock, recorder.record_sink(sink))
    player = asyncio.create_task(playout.run())

    async def agent_echoes_the_burst() -> None:
        await clock.sleep_until(reply_at)
        reply = playout.open()
        await reply.write(burst.tobytes(), SegmentStats())
        await reply.drained()

    sent_by_transport: list[tuple[bytes, float]] = []

    async def transport() -> AsyncIterator[tuple[bytes, float]]:
        async for item in paced(caller_audio, clock, caller_lead_s):
            sent_by_transport.append(item)
            yield item

    try:
        agent = asyncio.create_task(agent_echoes_the_burst())
        passed = [item async for item in recorder.record_caller(transport())]
        await agent
    finally:
        player.cancel()
    caller, agent_channel = recorder.channels()

    assert passed == sent_by_transport  # the call gets the transport's frames untouched
    assert len(caller) == len(agent_channel)
    caller_burst_at = round((caller_lead_s + 0.5) * SAMPLE_RATE)
    agent_burst_at = round(reply_at * SAMPLE_RATE)
    assert lag(caller, agent_channel) == agent_burst_at - caller_burst_at
    assert lag(burst, caller) == caller_burst_at
    assert lag(burst, agent_channel) == agent_burst_at
    # Nothing but the reply on the agent's side: the padding of its last frame is silence.
    assert not agent_channel[:agent_burst_at].any() and not agent_channel[agent_burst_at + len(burst) :].any()


async def test_caller_audio_is_continuous_from_where_its_first_frame_began() -> None:
    recorder = CallRecorder(VirtualClock(), started_at=1.0)
    # Stamps jitter; the first frame began 5 ms before the recording's zero.
    stamps = [1.015, 1.05, 1.052, 1.09, 1.101]

    async def jittery() -> AsyncIterator[tuple[bytes, float]]:
        for k, t in enumerate(stamps):
            yield np.full(FRAME_SAMPLES, k + 1, np.int16).tobytes(), t

    async for _ in recorder.record_caller(jittery()):
        pass
    caller, agent = recorder.channels()

    dropped = 80  # 5 ms before zero
    expected = np.repeat(np.arange(1, len(stamps) + 1, dtype=np.int16), FRAME_SAMPLES)[dropped:]
    assert np.array_equal(caller, expected)
    assert len(agent) == len(caller) and not agent.any()


async def test_agent_audio_the_sink_cleared_after_a_pause_is_not_recorded(clock: VirtualClock) -> None:
    recorder = CallRecorder(clock)
    room = RoomLikeSink()
    sink = recorder.record_sink(room)
    playout = Playout(clock, sink)
    player = asyncio.create_task(playout.run())
    try:
        interrupted = playout.open()
        await interrupted.write(np.full(SAMPLE_RATE, 1000, np.int16).tobytes(), SegmentStats())
        await clock.sleep_until(0.31)  # the caller barges in mid-frame (the frame from 0.30)
        playout.pause()
        await clock.sleep_until(0.5)
        interrupted.cancel()  # it was a real barge-in: the sink's queue is cleared
        playout.resume()
        answer = playout.open()
        await answer.write(np.full(SAMPLE_RATE // 10, 2000, np.int16).tobytes(), SegmentStats())
        await answer.drained()
    finally:
        player.cancel()
    _, agent = recorder.channels()

    assert room.calls == ["pause", "clear", "resume"]
    assert room.source == "the room's audio source" == sink.source
    heard_until = round(0.31 * SAMPLE_RATE)
    assert (agent[:heard_until] == 1000).all()
    assert not agent[heard_until:8000].any()  # what the sink held back and then dropped
    assert (agent[8000:] == 2000).all() and len(agent) == 8000 + SAMPLE_RATE // 10
    assert len(room.sent) == 16 + 5  # the sink still got every frame the playout sent


async def test_a_frame_queued_ahead_of_its_time_and_cleared_is_not_recorded(clock: VirtualClock) -> None:
    recorder = CallRecorder(clock)
    sink = recorder.record_sink(RoomLikeSink())
    frame = np.full(FRAME_SAMPLES, 1000, np.int16).tobytes()
    for t in (0.0, 0.02, 0.04, 0.06):  # a sink fed 60 ms ahead
        await sink.send(frame, t)
    await clock.sleep_until(0.03)
    sink.clear()

    _, agent = recorder.channels()

    assert len(agent) == round(0.03 * SAMPLE_RATE) and (agent == 1000).all()


async def test_the_wrappers_keep_the_transport_protocols() -> None:
    recorder = CallRecorder(VirtualClock())
    assert isinstance(recorder.record_sink(RoomLikeSink()), BufferedSink)
    # A plain sink must stay plain: the playout calls pause/clear only on a BufferedSink.
    assert not isinstance(recorder.record_sink(ListSink()), BufferedSink)

    closed: list[bool] = []

    async def room_caller() -> AsyncIterator[tuple[bytes, float]]:
        try:
            while True:
                yield bytes(2 * FRAME_SAMPLES), 0.02
        finally:
            closed.append(True)

    caller = recorder.record_caller(room_caller())
    await anext(caller)
    await caller.aclose()
    assert closed == [True]


# -- encoding ------------------------------------------------------------------------------------


def test_flac_round_trips_both_channels_losslessly() -> None:
    rng = np.random.default_rng(3)
    caller = (chirp(2.0).astype(np.int32) + rng.integers(-300, 300, 2 * SAMPLE_RATE)).astype(np.int16)
    agent = rng.integers(-32768, 32767, 2 * SAMPLE_RATE, dtype=np.int16, endpoint=True)

    decoded, rate = sf.read(io.BytesIO(encode_recording(caller, agent, SAMPLE_RATE, "flac")), dtype="int16")

    assert rate == SAMPLE_RATE
    assert np.array_equal(decoded[:, 0], caller) and np.array_equal(decoded[:, 1], agent)


def test_ogg_opus_keeps_duration_channels_and_where_each_side_spoke() -> None:
    n = round(2.5 * SAMPLE_RATE)
    caller, agent = np.zeros(n, np.int16), np.zeros(n, np.int16)
    caller[8000:16000] = tone(440, 0.5)  # 0.5-1.0 s
    agent[24000:32000] = tone(880, 0.5)  # 1.5-2.0 s
    data = encode_recording(caller, agent, SAMPLE_RATE, "ogg")

    info = sf.info(io.BytesIO(data))
    decoded, rate = sf.read(io.BytesIO(data), dtype="int16")

    assert (info.format, info.subtype, info.channels, rate) == ("OGG", "OPUS", 2, SAMPLE_RATE)
    assert abs(len(decoded) - n) <= FRAME_SAMPLES
    assert len(data) < n  # compressed: under a quarter of the PCM
    spoke, silent = rms(tone(440, 0.5)), 0.02 * rms(tone(440, 0.5))
    edge = 800  # 50 ms either side of each tone: the codec's transients
    for channel, (start, end) in ((0, (8000, 16000)), (1, (24000, 32000))):
        x = decoded[:, channel]
        assert rms(x[start + edge : end - edge]) > 0.7 * spoke
        assert rms(x[: start - edge]) < silent and rms(x[end + edge :]) < silent


@pytest.mark.parametrize(
    ("caller", "agent", "rate", "fmt", "problem"),
    [
        (tone(440, 0.1), tone(440, 0.2), SAMPLE_RATE, "flac", "equal"),
        (tone(440, 0.1), tone(440, 0.1).astype(np.float32), SAMPLE_RATE, "flac", "int16"),
        (np.zeros(0, np.int16), np.zeros(0, np.int16), SAMPLE_RATE, "flac", "no audio"),
        (tone(440, 0.1, 44_100), tone(440, 0.1, 44_100), 44_100, "ogg", "not 44100 Hz"),
        (tone(440, 0.1), tone(440, 0.1), SAMPLE_RATE, "mp3", "'mp3'"),
    ],
)
def test_encoding_refuses_what_it_cannot_encode_by_name(
    caller: Int16Array, agent: Int16Array, rate: int, fmt: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        encode_recording(caller, agent, rate, fmt)


# -- local store ---------------------------------------------------------------------------------


def files_under(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


async def test_local_store_saves_under_nested_keys_and_reads_back(tmp_path: Path) -> None:
    store = recording_store(str(tmp_path / "recordings"))

    location = await store.save("2026/05/call-1.flac", b"first", "audio/flac")

    assert location == (tmp_path / "recordings/2026/05/call-1.flac").as_uri()
    assert await store.open(location) == b"first"
    assert files_under(tmp_path) == ["recordings/2026/05/call-1.flac"]  # no temporary file left


async def test_local_store_replaces_whole_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalRecordingStore(tmp_path)
    location = await store.save("call.flac", b"old", "audio/flac")

    def disk_fails(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_fails)
    with pytest.raises(RecordingStoreError, match=r"cannot write .*call\.flac: .*No space left"):
        await store.save("call.flac", b"new", "audio/flac")
    monkeypatch.undo()

    assert await store.open(location) == b"old"
    assert files_under(tmp_path) == ["call.flac"]
    assert await store.open(await store.save("call.flac", b"new", "audio/flac")) == b"new"


@pytest.mark.parametrize(
    "key",
    ["../escape.flac", "a/../../escape.flac", "/etc/escape.flac", "..", ".hidden", "a//b", "", "a\\..\\b"],
)
async def test_local_store_refuses_keys_that_could_leave_its_directory(tmp_path: Path, key: str) -> None:
    store = LocalRecordingStore(tmp_path / "recordings")
    with pytest.raises(ValueError, match="recording key"):
        await store.save(key, b"x", "audio/flac")
    assert files_under(tmp_path) == []


async def test_a_call_id_with_a_path_in_it_still_lands_inside_the_store(
    tmp_path: Path, clock: VirtualClock
) -> None:
    recorder = CallRecorder(clock)
    async for _ in recorder.record_caller(paced(chirp(0.5), clock, 0.0)):
        pass
    await recorder.record_sink(ListSink()).send(tone(440, 0.02).tobytes(), 0.1)
    store = LocalRecordingStore(tmp_path / "recordings")

    location = await save_recording(recorder, store, "../../etc/passwd")

    assert location.startswith((tmp_path / "recordings").as_uri() + "/")
    assert files_under(tmp_path) == ["recordings/" + recording_key("../../etc/passwd", "flac")]
    decoded, _ = sf.read(io.BytesIO(await store.open(location)), dtype="int16")
    caller, agent = recorder.channels()
    assert np.array_equal(decoded[:, 0], caller) and np.array_equal(decoded[:, 1], agent)
    # Ids that differ only in unsafe characters keep apart.
    assert recording_key("a/b", "flac") != recording_key("a?b", "flac")
    assert recording_key("call-7", "ogg") == "call-7.ogg"


async def test_local_store_reads_only_its_own_locations(tmp_path: Path) -> None:
    store = LocalRecordingStore(tmp_path / "recordings")
    (tmp_path / "secret").write_bytes(b"not a recording")
    for location in [
        (tmp_path / "secret").as_uri(),
        (tmp_path / "recordings").as_uri() + "/../secret",
        "s3://bucket/secret",
    ]:
        with pytest.raises(ValueError, match="recording"):
            await store.open(location)
    with pytest.raises(RecordingStoreError, match="no recording at"):
        await store.open((tmp_path / "recordings/missing.flac").as_uri())


# -- settings ------------------------------------------------------------------------------------


def test_recording_store_from_a_setting() -> None:
    local = recording_store("file:///var/lib/voicerun/recordings")
    assert isinstance(local, LocalRecordingStore)
    assert local.directory == Path("/var/lib/voicerun/recordings")
    s3 = recording_store("s3://calls/voicerun/prod/?endpoint_url=http://127.0.0.1:9000&region=eu-west-1")
    assert isinstance(s3, S3RecordingStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region) == (
        "calls",
        "voicerun/prod",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    plain = recording_store("s3://calls")
    assert isinstance(plain, S3RecordingStore)
    assert (plain.prefix, plain.endpoint_url, plain.region) == ("", None, None)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("recordings", "expected a directory"),
        ("ftp://host/recordings", "expected a directory"),
        ("file://host/recordings", "file:///absolute/path"),
        ("s3://", "no bucket"),
        ("s3://calls?endpoint=http://x", r"unknown option\(s\) \['endpoint'\]"),
        ("s3://calls?region=a&region=b", r"more than once \['region'\]"),
    ],
)
def test_recording_store_names_what_is_wrong_with_a_setting(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as raised:
        recording_store(url)
    assert "s3://bucket[/prefix]" in str(raised.value)


# -- S3, on a real local server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1, with a bucket `recordings`."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
            aws_secret_access_key="test",
        ).create_bucket(Bucket="recordings")  # fmt: skip
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """boto3's chain finds test keys in the environment and nothing else: no config files, no
    instance metadata, no endpoint override."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.mark.usefixtures("aws_env")
async def test_s3_store_puts_and_gets_back_the_recording(s3_endpoint: str) -> None:
    store = recording_store(f"s3://recordings/calls/2026?endpoint_url={s3_endpoint}&region=us-east-1")
    data = encode_recording(chirp(1.0), tone(440, 1.0), SAMPLE_RATE, "flac")

    location = await store.save("call-1.flac", data, "audio/flac")

    assert location == "s3://recordings/calls/2026/call-1.flac"
    assert await store.open(location) == data
    with pytest.raises(
        RecordingStoreError, match=re.escape("no recording at s3://recordings/calls/2026/gone.flac")
    ):
        await store.open("s3://recordings/calls/2026/gone.flac")
    with pytest.raises(ValueError, match="not in s3://recordings/calls/2026"):
        await store.open("s3://other-bucket/calls/2026/call-1.flac")


@pytest.mark.usefixtures("aws_env")
async def test_s3_store_names_a_missing_bucket(s3_endpoint: str) -> None:
    store = S3RecordingStore(
        "no-such-bucket", endpoint_url=s3_endpoint, region="us-east-1",
        access_key_id="explicit", secret_access_key="explicit",
    )  # fmt: skip
    with pytest.raises(
        RecordingStoreError, match=re.escape(f"S3 bucket 'no-such-bucket' does not exist at {s3_endpoint}")
    ):
        await store.save("call-1.flac", b"x", "audio/flac")
