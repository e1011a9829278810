"""Calls per process through the real room audio path: livekit rtc frames in and out, no server.

Each call is a loopback per direction, as FINDINGS.md describes (no room needed):

    caller AudioSource (48 kHz, fed the bench workload in 10 ms frames; capture_frame paces)
      -> LocalAudioTrack -> AudioStream (48 kHz 10 ms, or 16 kHz 20 ms with --subscribe 16000)
      -> RoomCaller -> Call (instant providers) -> RoomSink -> its AudioSource
      -> LocalAudioTrack -> AudioStream "ear" (48 kHz 10 ms): first non-silent frame after each
         end of speech

heard overhead = (first non-silent ear frame) - (scheduled end of speech) - 300 ms

The schedule starts when the feeder hands the source its first frame: the source plays on its
own native timer from then, as a remote caller's audio would arrive whatever our loop is doing.
Workload as bench/overhead.py: 5 x (1 s speech-like + 2 s silence), end of speech 300 ms; calls
start spread over one 3 s cycle.

The feeders and ears are the bench's stand-ins for the remote side; they are livekit objects in
this process too, so they add to the SDK's cost here. `--sdk-only` measures that SDK cost alone
(sources + feeders, with and without one AudioStream each, no Call) to separate it out.

    .venv/bin/python bench/room_audio.py --calls 10 25 50 100 [--subscribe 16000]
    .venv/bin/python bench/room_audio.py --sdk-only --calls 10 25 50 100 [--subscribe 16000]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import soxr
import structlog
from livekit import rtc

# bench/ is on sys.path when this is run as a script: the workload is overhead.py's, not a copy.
from overhead import BENCH_WORKFLOW, END_SILENCE_MS, SILENCE_S, SPEECH_S, caller_audio

from agent import Call, ProviderPool
from agent._load import rss_mb, speech_ends
from agent._room_audio import RoomCaller, RoomSink
from pipeline import SAMPLE_RATE, RealClock, VADConfig
from pipeline.testing import instant_providers
from workflows import Workflow, load_workflow_text

ROOM_RATE = 48_000
TICK = ROOM_RATE // 100  # the source's 10 ms tick, the feeder's frame
CYCLE_S = SPEECH_S + SILENCE_S
SILENT_PEAK = 100
"""An ear frame whose peak is above this is agent audio: the tone is ~10 000, resampled silence
is 0 or a dither LSB or two."""
THREAD_PER_CALL = False
"""--thread-per-call: each call on its own thread and event loop, as livekit-agents' THREAD
executor runs jobs; default: every call on one loop, as the worker runs them."""
ROUTED = True
"""Each stream's frames go to it alone (agent._rtc_events, as the worker does); --unrouted: the
SDK's own fan-out to every stream."""
STOP_AFTER_S = 0.2
"""The caller hangs up this long after its audio has played (the last reply is long over: it
ends ~1 s into the final 2 s of silence)."""


@dataclass
class Shared:
    """What every call reads: one copy of the audio per run."""

    feed: list[rtc.AudioFrame]  # the caller audio at 48 kHz, 10 ms frames
    length_s: float
    ends: list[float]  # end of each utterance, seconds into the audio
    workflow: Workflow
    providers: ProviderPool
    subscribe_rate: int
    subscribe_ms: int


@dataclass
class Tally:
    heard_ms: list[float] = field(default_factory=list)
    reported_ms: list[float] = field(default_factory=list)
    unanswered: int = 0
    answered_by_call: int = 0  # turns the calls' own summaries report answered
    caller_lag_ms: list[float] = field(default_factory=list)
    failed: int = 0


def make_shared(subscribe_rate: int, providers: ProviderPool) -> Shared:
    workflow = load_workflow_text(BENCH_WORKFLOW)
    caller = caller_audio()
    settings = workflow.turn_for(workflow.start)
    vad = VADConfig(mode=settings.vad_mode, start_voiced_ms=settings.start_of_speech_ms,
                    end_silence_ms=settings.end_of_speech_ms, preroll_ms=settings.preroll_ms)  # fmt: skip
    up = soxr.resample(caller, SAMPLE_RATE, ROOM_RATE).astype(np.int16)  # once, shared by all calls
    up = np.pad(up, (0, -len(up) % TICK))
    # AudioFrames are read-only to capture_frame, so one list serves every call.
    feed = [rtc.AudioFrame(up[i : i + TICK].tobytes(), ROOM_RATE, 1, TICK) for i in range(0, len(up), TICK)]
    return Shared(
        feed=feed,
        length_s=len(up) / ROOM_RATE,
        ends=speech_ends(caller, vad),
        workflow=workflow,
        providers=providers,
        subscribe_rate=subscribe_rate,
        subscribe_ms=20 if subscribe_rate == 16_000 else 10,
    )


class Feeder:
    """Plays the caller's audio into a source. capture_frame returns once the source has room
    (1 s queue), so the source, not this loop, sets the pace: a late loop eats into the queue
    before the caller's audio is late."""

    def __init__(
        self, source: rtc.AudioSource, feed: list[rtc.AudioFrame], stop_s: float | None = None
    ) -> None:
        self._source = source
        self._feed = feed
        self._stop_s = stop_s
        self.t0: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for k, frame in enumerate(self._feed):
            if k == 0:
                self.t0.set_result(loop.time())
            elif self._stop_s is not None and loop.time() - self.t0.result() > self._stop_s:
                return
            await self._source.capture_frame(frame)


class CallerUntil:
    """The caller stream until `deadline` (then it ends, as a caller hanging up ends the track),
    and how far its audio lags the schedule when it ends: the loop's or the SDK's backlog."""

    def __init__(self, stream: rtc.AudioStream, t0: asyncio.Future[float], length_s: float) -> None:
        self._stream = stream
        self._t0 = t0
        self._length_s = length_s
        self._received_s = 0.0
        self.lag_ms: float | None = None

    def __aiter__(self) -> CallerUntil:
        return self

    async def __anext__(self) -> rtc.AudioFrameEvent:
        t0 = await self._t0
        loop = asyncio.get_running_loop()
        deadline = t0 + self._length_s + STOP_AFTER_S
        try:
            # Bounded: an overloaded loopback can go quiet for tens of seconds (seen at 25 calls,
            # 16 kHz), and the caller's hang-up must not wait for its next frame.
            async with asyncio.timeout_at(deadline):
                event = await anext(self._stream)
        except TimeoutError:
            event = None
        now = loop.time()
        if event is None or now >= deadline:
            self.lag_ms = (now - t0 - self._received_s) * 1000
            raise StopAsyncIteration
        self._received_s += event.frame.samples_per_channel / event.frame.sample_rate
        return event

    async def aclose(self) -> None:
        await self._stream.aclose()


class Ear:
    """Listens to the agent's track: the first non-silent frame after each scheduled end of
    speech is that turn's answer; an end passed with the previous one still unanswered, or left
    unanswered at hang-up, is an unanswered turn."""

    def __init__(
        self, stream: rtc.AudioStream, t0: asyncio.Future[float], ends: list[float], tally: Tally
    ) -> None:
        self._stream = stream
        self._t0 = t0
        self._ends = ends
        self._tally = tally
        self._waiting: deque[float] = deque()
        self._task = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        t0 = await self._t0
        ends = deque(t0 + e for e in self._ends)
        loop = asyncio.get_running_loop()
        async for event in self._stream:
            now = loop.time()
            while ends and ends[0] <= now:
                if self._waiting:
                    self._tally.unanswered += 1
                    self._waiting.clear()
                self._waiting.append(ends.popleft())
            if self._waiting and np.abs(event.frame.data).max() > SILENT_PEAK:
                self._tally.heard_ms.append((now - self._waiting.popleft()) * 1000)

    async def hang_up(self) -> None:
        await self._stream.aclose()
        await self._task
        self._tally.unanswered += len(self._waiting)
        self._waiting.clear()


async def one_call(index: int, delay_s: float, shared: Shared, tally: Tally) -> None:
    await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    caller_source = rtc.AudioSource(ROOM_RATE, 1, loop=loop)
    caller_track = rtc.LocalAudioTrack.create_audio_track(f"caller-{index}", caller_source)
    stream = rtc.AudioStream(caller_track, loop=loop, sample_rate=shared.subscribe_rate, num_channels=1,
                             frame_size_ms=shared.subscribe_ms)  # fmt: skip
    if ROUTED:
        route_by_handle(stream)
    feeder = Feeder(caller_source, shared.feed)
    caller = CallerUntil(stream, feeder.t0, shared.length_s)
    sink = RoomSink()
    ear_track = rtc.LocalAudioTrack.create_audio_track(f"agent-{index}", sink.source)
    ear_stream = rtc.AudioStream(ear_track, loop=loop, sample_rate=ROOM_RATE, num_channels=1)
    if ROUTED:
        route_by_handle(ear_stream)
    ear = Ear(ear_stream, feeder.t0, shared.ends, tally)
    clock = RealClock()
    call = Call(workflow=shared.workflow, providers=shared.providers, caller=RoomCaller(caller, clock),
                sink=sink, clock=clock, call_id=f"room-{index}")  # fmt: skip
    feeding = asyncio.create_task(feeder.run())
    try:
        record = await call.run()
        summary = record.summary
        if record.status == "failed" or summary is None:
            tally.failed += 1
        else:
            answered = [t.e2e_latency_ms for t in summary.turns if t.e2e_latency_ms is not None]
            tally.answered_by_call += len(answered)
            tally.reported_ms.extend(answered)
    finally:
        feeding.cancel()
        await asyncio.wait([feeding])
        await sink.aclose()
        await ear.hang_up()
        await caller_source.aclose()
        if caller.lag_ms is not None:
            tally.caller_lag_ms.append(caller.lag_ms)


@dataclass
class Sampler:
    """Peak RSS, sampled every 0.5 s over the run."""

    peak_mb: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.peak_mb = rss_mb()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, rss_mb())
            await asyncio.sleep(0.5)

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.wait([self._task])
        self.peak_mb = max(self.peak_mb, rss_mb())


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def run_calls(n: int, subscribe_rate: int) -> dict[str, float]:
    pool = ProviderPool(instant_providers())
    try:
        shared = make_shared(subscribe_rate, pool)
        start = shared.workflow.start
        await pool.stt(shared.workflow.stt_for(start))  # built once, here: each loop then reuses them
        await pool.tts(shared.workflow.tts_for(start))
        tally = Tally()
        sampler = Sampler()
        sampler.start()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if THREAD_PER_CALL:
            # livekit-agents' THREAD executor: each job on a thread with an event loop of its own.
            from concurrent.futures import ThreadPoolExecutor

            loop = asyncio.get_running_loop()
            with ThreadPoolExecutor(max_workers=n) as threads:
                await asyncio.gather(*(
                    loop.run_in_executor(threads, asyncio.run, one_call(i, CYCLE_S * i / n, shared, tally))
                    for i in range(n)
                ))  # fmt: skip
        else:
            async with asyncio.TaskGroup() as tg:
                for i in range(n):
                    tg.create_task(one_call(i, CYCLE_S * i / n, shared, tally))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        await sampler.stop()
    finally:
        await pool.aclose()
    overhead = sorted(h - END_SILENCE_MS for h in tally.heard_ms)
    return {
        "calls": n,
        "turns": len(overhead),
        "expected": n * len(shared.ends),
        "unanswered": tally.unanswered,
        "by_call": tally.answered_by_call,
        "failed": tally.failed,
        "p50": statistics.median(overhead) if overhead else float("nan"),
        "p95": pct(overhead, 95),
        "max": overhead[-1] if overhead else float("nan"),
        "reported_p95": pct([r - END_SILENCE_MS for r in tally.reported_ms], 95),
        "lag_max": max(tally.caller_lag_ms, default=float("nan")),
        "cpu": cpu / (n * shared.length_s),
        "rss": sampler.peak_mb,
        "wall": wall,
        "load1": os.getloadavg()[0],
    }


async def run_sdk(
    n: int, subscribe_rate: int, streams: bool, seconds: float, routed: bool
) -> dict[str, float]:
    """n caller sources fed as in a call, each with one AudioStream drained (streams=True) or
    none: the SDK's own cost, no Call. CPU is counted over `seconds` once all are running."""
    loop = asyncio.get_running_loop()
    shared = make_shared(subscribe_rate, ProviderPool(instant_providers()))
    frames = [0]
    sources, tasks, stream_list = [], [], []

    async def drain(stream: rtc.AudioStream) -> None:
        async for _ in stream:
            frames[0] += 1

    for i in range(n):
        source = rtc.AudioSource(ROOM_RATE, 1, loop=loop)
        sources.append(source)
        tasks.append(asyncio.create_task(Feeder(source, shared.feed, stop_s=seconds + 2).run()))
        if streams:
            track = rtc.LocalAudioTrack.create_audio_track(f"caller-{i}", source)
            stream = rtc.AudioStream(track, loop=loop, sample_rate=subscribe_rate, num_channels=1,
                                     frame_size_ms=shared.subscribe_ms)  # fmt: skip
            if routed:
                route_by_handle(stream)
            stream_list.append(stream)
            tasks.append(asyncio.create_task(drain(stream)))
    await asyncio.sleep(1.0)  # past the 1 s the queues take at once: steady state
    cpu0, frames0, wall0 = time.process_time(), frames[0], time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall, got = time.process_time() - cpu0, time.perf_counter() - wall0, frames[0] - frames0
    for stream in stream_list:
        await stream.aclose()
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for source in sources:
        await source.aclose()
    expected = n * wall * 1000 / shared.subscribe_ms if streams else 0
    return {"n": n, "cpu": cpu / (n * wall), "frames": got / expected if expected else float("nan"),
            "load1": os.getloadavg()[0]}  # fmt: skip


def route_by_handle(stream: rtc.AudioStream) -> None:
    from agent._rtc_events import bind_stream

    bind_stream(stream)


def fmt(v: float, spec: str = ".1f") -> str:
    return "—" if v != v else format(v, spec)


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, nargs="*", default=[10, 25, 50, 100])
    ap.add_argument("--subscribe", type=int, choices=[16_000, 48_000], default=48_000,
                    help="caller stream: 48 kHz 10 ms frames, or 16 kHz 20 ms (native resampling)")  # fmt: skip
    ap.add_argument("--sdk-only", action="store_true", help="sources + streams only, no Call")
    ap.add_argument("--seconds", type=float, default=8.0, help="--sdk-only: measured seconds per size")
    ap.add_argument("--routed", action="store_true", help="--sdk-only: also streams routed by handle")
    ap.add_argument(
        "--thread-per-call", action="store_true", help="each call on a thread and loop of its own"
    )
    ap.add_argument(
        "--unrouted", action="store_true", help="the SDK's fan-out of every frame to every stream"
    )
    args = ap.parse_args()
    global ROUTED, THREAD_PER_CALL
    ROUTED = not args.unrouted
    THREAD_PER_CALL = args.thread_per_call
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, livekit rtc {rtc.__version__}; "
          f"subscribe {args.subscribe} Hz; {'unrouted' if args.unrouted else 'routed'}; {'thread per call' if args.thread_per_call else 'one loop'}; load average before {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    if args.sdk_only:
        sdk_only(args)
        return
    print(f"{'calls':>5} {'turns':>9} {'unans':>5} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} "
          f"{'rep p95':>7} {'lag ms':>7} {'cpu s/call-s':>12} {'RSS MB':>7} {'MB/call':>7} "
          f"{'wall s':>6} {'load1':>5}")  # fmt: skip
    base: dict[str, float] | None = None
    for n in args.calls:
        r = asyncio.run(run_calls(n, args.subscribe))
        per_call = (
            (r["rss"] - base["rss"]) / (n - base["calls"]) if base and n > base["calls"] else float("nan")
        )
        base = base or r
        turns = f"{r['turns']:.0f}/{r['expected']:.0f}"
        print(f"{n:>5} {turns:>9} {r['unanswered']:>5.0f} {fmt(r['p50']):>7} {fmt(r['p95']):>7} "
              f"{fmt(r['max']):>7} {fmt(r['reported_p95']):>7} {fmt(r['lag_max']):>7} {r['cpu']:>12.5f} "
              f"{r['rss']:>7.1f} {fmt(per_call, '.2f'):>7} {r['wall']:>6.1f} {r['load1']:>5.2f}"
              + (f"  failed {r['failed']:.0f}" if r["failed"] else ""), flush=True)  # fmt: skip
        if r["turns"] < r["expected"] or r["p95"] > 1000:
            print("stopping: turns unanswered or p95 over 1 s", flush=True)
            break


def sdk_only(args: argparse.Namespace) -> None:
    variants: list[tuple[str, Callable[[int], dict[str, float]]]] = [
        ("sources", lambda n: asyncio.run(run_sdk(n, args.subscribe, False, args.seconds, False))),
        ("+streams", lambda n: asyncio.run(run_sdk(n, args.subscribe, True, args.seconds, False))),
    ]
    if args.routed:
        variants.append(
            ("+routed", lambda n: asyncio.run(run_sdk(n, args.subscribe, True, args.seconds, True)))
        )
    print(f"{'n':>5} " + " ".join(f"{name + ' cpu s/s':>18} " for name, _ in variants)
          + f"{'stream s/s':>11} {'frames':>7} {'load1':>5}")  # fmt: skip
    for n in args.calls:
        rows = [run(n) for _, run in variants]
        # per stream-second: what adding one stream to each source costs, over the sources alone
        print(f"{n:>5} " + " ".join(f"{r['cpu']:>18.5f} " for r in rows)
              + f"{rows[1]['cpu'] - rows[0]['cpu']:>11.5f} {fmt(rows[1]['frames'], '.2f'):>7} "
              f"{rows[-1]['load1']:>5.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
