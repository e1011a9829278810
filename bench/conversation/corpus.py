"""The benchmark's callers: seeded, deterministic caller WAVs with a script of every utterance.

The agent's timing is only known at run time, yet events must land "1.2 s into the answer". The
agent's lines are fixed (rules) and its voice is seeded, so each answer's length is known before
the call: the generator synthesizes every answer with the same TTS, settings and sentence split
as the pipeline, and places caller events against a planned reply start = end of the caller's
speech + `REPLY_LATENCY_S`. The scorer never trusts the plan: it measures where the agent really
spoke from CALL.wav. Long margins after each episode keep a reply that overran its plan (a stale
tail, a restart) from colliding with the next episode.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

from pipeline import SAMPLE_RATE, Int16Array, SentenceSplitter, to_internal, write_wav
from workflows import Workflow, load_workflow

if TYPE_CHECKING:
    from hibari import Hibari

from .script import Kind, Part, PlannedReply, Script, Segment

HERE = Path(__file__).resolve().parent
WORKFLOW = HERE / "workflow.yaml"

VOICES = ("hibari", "espeak")
CONDITIONS = ("clean", "noise-50", "noise-40", "tel8k")
CALLS_PER_GROUP = 6  # 2 voices x 4 conditions x 6 = 48 calls

REPLY_LATENCY_S = 0.35
"""Planned end of speech -> first agent audio (today's pipeline measures 320-340 ms)."""
GREETING_START_S = 0.05
EPISODE_MARGIN_S = 8.0
"""Silence after an answer's planned end before the next episode: costs nothing under --fast."""
AUDIBLE_DBFS = -50.0
"""Where a rendered caller line is trimmed: its start_s/end_s are its first/last sample above this."""

QUESTIONS = (
    "What time do you open on Sunday?",
    "What are today's specials?",
    "Do you deliver to the harbor area?",
    "Could you tell me your opening hours, please?",
    "What is on the menu tonight?",
    "How much does delivery cost?",
)
FAST_FINISHES = ("Are you open now?", "Do you deliver?", "What's on the menu?", "What are your hours?")
PAUSED_SENTENCES = (
    ("My order number is", "four five six."),
    ("I would like to book a table for", "two people at seven."),
    ("I'm calling about my order, it's number", "three one two."),
    ("Can you tell me if you deliver to", "Harbor Street?"),
    ("I would like to reserve a table for", "four people on Friday."),
    ("What time do you", "close on Saturday?"),
)
BARGE_INS = (
    "Stop. I want to speak to a human, please.",
    "Stop. I want to speak to a human, please.",
    "Sorry, can I talk to a real person?",
    "Wait, wait. Let me speak to a manager.",
)
BACKCHANNELS = ("uh-huh", "mhm", "okay", "right", "yeah", "I see", "got it", "sure", "all right")
# espeak-ng reads "mhm" as letters; these spellings make it hum.
_ESPEAK_SPELLING = {"mhm": "mm hmm", "uh-huh": "uh huh"}


# -- voices ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Voice:
    name: str
    say: Callable[[str, bool], Int16Array]
    """(text, fast) -> 16 kHz int16 speech, trimmed to its audible span."""


def trim(x: Int16Array, dbfs: float = AUDIBLE_DBFS) -> Int16Array:
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > 32768 * 10 ** (dbfs / 20))
    return x[int(loud[0]) : int(loud[-1]) + 1] if loud.size else x[:0]


@cache
def _hibari() -> Hibari:
    from hibari import Hibari

    return Hibari()


def hibari_voice(seed: int) -> Voice:
    engine = _hibari()
    speed = 0.9 + 0.05 * (seed % 3)

    def say(text: str, fast: bool) -> Int16Array:
        return trim(to_internal(engine(text, speed=1.2 if fast else speed, seed=seed), 24_000))

    return Voice("hibari", say)


ESPEAK_VARIANTS = ("en-us", "en-us+m3", "en-gb", "en-us+f2", "en-us+m7", "en-gb+f3")


def espeak_voice(seed: int) -> Voice:
    variant = ESPEAK_VARIANTS[seed % len(ESPEAK_VARIANTS)]
    rate, pitch = 155 + 5 * (seed % 4), 40 + 5 * (seed % 5)

    def say(text: str, fast: bool) -> Int16Array:
        spoken = _ESPEAK_SPELLING.get(text, text)
        out = subprocess.run(
            ["espeak-ng", "-v", variant, "-s", str(200 if fast else rate), "-p", str(pitch), "--stdout", spoken],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        x, rate_hz = sf.read(io.BytesIO(out), dtype="float32")
        return trim(to_internal(x, rate_hz))

    return Voice("espeak", say)


# -- line conditions ----------------------------------------------------------------------------


def _noise(n: int, dbfs: float, color: str, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    w = rng.standard_normal(n)
    if color == "pink":
        spectrum = np.fft.rfft(w)
        spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))
        spectrum[0] = 0
        w = np.fft.irfft(spectrum, n)
    scaled: npt.NDArray[np.float64] = w / np.sqrt(np.mean(w**2)) * 32768 * 10 ** (dbfs / 20)
    return scaled


def telephone(x: Int16Array) -> Int16Array:
    """A G.711 line: 300-3400 Hz, 8 kHz, mu-law, then back to 16 kHz as a transport would."""
    y = soxr.resample(x.astype(np.float32) / 32768.0, SAMPLE_RATE, 8000, quality="HQ")
    spectrum = np.fft.rfft(y)
    freqs = np.fft.rfftfreq(y.size, 1 / 8000)
    spectrum[(freqs < 300) | (freqs > 3400)] = 0
    y = np.fft.irfft(spectrum, y.size)
    mu = 255.0
    y = np.clip(y, -1.0, 1.0)
    coded = np.round(np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) * 127) / 127
    y = np.sign(coded) * ((1 + mu) ** np.abs(coded) - 1) / mu
    return to_internal(soxr.resample(y.astype(np.float32), 8000, SAMPLE_RATE, quality="HQ"), SAMPLE_RATE)


def apply_condition(x: Int16Array, condition: str, seed: int) -> Int16Array:
    rng = np.random.default_rng(seed)
    if condition == "clean":
        return x
    if condition in ("noise-50", "noise-40"):
        # -50: line hiss (white); -40: room and traffic (pink). White noise at -40 dBFS keeps
        # webrtcvad voiced on 12% of frames, which would test the VAD rather than turn-taking.
        color, dbfs = ("white", -50.0) if condition == "noise-50" else ("pink", -40.0)
        mixed = x.astype(np.float64) + _noise(x.size, dbfs, color, rng)
        return np.clip(np.round(mixed), -32768, 32767).astype(np.int16)
    if condition == "tel8k":
        return telephone(x)
    raise ValueError(f"unknown condition {condition!r}")


# -- the agent's side ---------------------------------------------------------------------------


def answers(workflow: Workflow) -> dict[str, str]:
    """Everything the start agent can say, by id: greeting, each rule by its first keyword, fallback."""
    agent = workflow.agent(workflow.start)
    out: dict[str, str] = {}
    if agent.greeting:
        out["greeting"] = agent.greeting
    for rule in agent.rules:
        if rule.say and rule.keywords:
            out[rule.keywords[0]] = rule.say
    out["fallback"] = agent.fallback
    return out


def expected_answer(workflow: Workflow, text: str) -> str:
    """The answer the rules give to these words (the same matching as the runtime)."""
    for rule in workflow.agent(workflow.start).rules:
        if rule.say and rule.keywords and rule.pattern().search(text):
            return rule.keywords[0]
    return "fallback"


async def render_answers(workflow: Workflow, texts: dict[str, str]) -> dict[str, Int16Array]:
    """Each answer spoken as the pipeline speaks it: the same TTS and seed, the same sentence
    split, the segments back to back, trimmed to the audible span (as the first segment is)."""
    from pipeline.providers import HibariConfig, HibariTTS

    spec = workflow.defaults.tts
    if spec.provider != "hibari":
        raise SystemExit(f"{WORKFLOW}: the benchmark plans on hibari, not {spec.provider}")
    tts = HibariTTS(HibariConfig(**spec.options))
    split = workflow.defaults.turn.first_clause_min_chars
    out = {}
    for answer, text in texts.items():
        splitter = SentenceSplitter(split)
        pcm = b""
        for clause in [*splitter.push(text), *splitter.flush()]:
            pcm += b"".join([chunk async for chunk in tts.synthesize(clause.text)])
        out[answer] = trim(np.frombuffer(pcm, "<i2"), -40.0)
    return out


# -- one call -----------------------------------------------------------------------------------


class _Timeline:
    def __init__(self, durations: dict[str, float], workflow: Workflow) -> None:
        self.durations = durations
        self.workflow = workflow
        self.pieces: list[tuple[float, Int16Array]] = []
        self.segments: list[Segment] = []
        self.replies: list[PlannedReply] = []

    def place(self, at_s: float, audio: Int16Array) -> float:
        self.pieces.append((at_s, audio))
        return at_s + audio.size / SAMPLE_RATE

    def reply(self, answer: str, start_s: float, cause: int | None) -> PlannedReply:
        r = PlannedReply(answer, round(start_s, 3), round(start_s + self.durations[answer], 3), cause)
        self.replies.append(r)
        return r

    def say(self, voice: Voice, kind: Kind, text: str, at_s: float, *, fast: bool = False,
            over: int | None = None) -> Segment:  # fmt: skip
        end = self.place(at_s, voice.say(text, fast))
        offset = None if over is None else round(at_s - self.replies[over].start_s, 3)
        expects = None if kind == "backchannel" else expected_answer(self.workflow, text)
        seg = Segment(kind, text, round(at_s, 3), round(end, 3), (), over, offset, expects)
        self.segments.append(seg)
        return seg

    def say_paused(self, voice: Voice, first: str, second: str, at_s: float, pause_s: float) -> Segment:
        end1 = self.place(at_s, voice.say(first, False))
        start2 = end1 + pause_s
        end2 = self.place(start2, voice.say(second, False))
        text = f"{first} {second}"
        parts = (Part(round(at_s, 3), round(end1, 3), first), Part(round(start2, 3), round(end2, 3), second))
        seg = Segment("paused_sentence", text, parts[0].start_s, parts[1].end_s, parts, None, None,
                      expected_answer(self.workflow, text))  # fmt: skip
        self.segments.append(seg)
        return seg

    def answer(self, seg: Segment) -> PlannedReply:
        assert seg.expects is not None
        return self.reply(seg.expects, seg.end_s + REPLY_LATENCY_S, len(self.segments) - 1)

    def render(self, tail_s: float) -> Int16Array:
        end = max(at + a.size / SAMPLE_RATE for at, a in self.pieces) + tail_s
        out = np.zeros(round(end * SAMPLE_RATE), np.int32)
        for at, a in self.pieces:
            k = round(at * SAMPLE_RATE)
            out[k : k + a.size] += a
        return np.clip(out, -32768, 32767).astype(np.int16)


def build_call(index: int, story: int, voice: Voice, condition: str, seed: int, workflow: Workflow,
               durations: dict[str, float], texts: dict[str, str]) -> tuple[Script, Int16Array]:  # fmt: skip
    """Greeting (maybe a backchannel over it), then three episodes: a question answered with
    backchannels over the answer; a sentence with a pause in the middle (maybe a backchannel over
    its answer); a question whose answer the caller cuts off ~1.2 s in.

    `story` alone picks the words and the timing plan, so every voice and condition plays the
    same stories and a difference between conditions is the condition's; `seed` draws the noise.
    """
    rng = np.random.default_rng(seed - seed % 1000 + story)
    tl = _Timeline(durations, workflow)
    bc = iter(BACKCHANNELS[(4 * story + k) % len(BACKCHANNELS)] for k in range(100))

    greeting = tl.reply("greeting", GREETING_START_S, None)
    after_greeting = greeting.end_s + rng.uniform(1.5, 2.5)
    if story % 2:
        tl.say(voice, "backchannel", next(bc), greeting.start_s + rng.uniform(3.0, 9.0), over=0)
        after_greeting += 3.0  # room for the agent to pause over the backchannel and resume

    # Episode 1: a question, backchannels over the long answer.
    fast = story % 3 == 0
    q = FAST_FINISHES[story % len(FAST_FINISHES)] if fast else QUESTIONS[story % len(QUESTIONS)]
    seg = tl.say(voice, "fast_finish" if fast else "question", q, after_greeting, fast=fast)
    a1 = tl.answer(seg)
    at = a1.start_s + rng.uniform(2.0, 4.0)
    for _ in range(2):
        tl.say(voice, "backchannel", next(bc), at, over=len(tl.replies) - 1)
        at += rng.uniform(3.0, 5.0)

    # Episode 2: a pause in the middle of a sentence.
    first, second = PAUSED_SENTENCES[story % len(PAUSED_SENTENCES)]
    seg = tl.say_paused(voice, first, second, a1.end_s + EPISODE_MARGIN_S, rng.uniform(0.4, 1.0))
    a2 = tl.answer(seg)
    if story % 2 == 0:
        tl.say(voice, "backchannel", next(bc), a2.start_s + rng.uniform(3.0, 8.0), over=len(tl.replies) - 1)

    # Episode 3: a real barge-in about 1.2 s into a long answer.
    fast = story % 3 == 1
    q = FAST_FINISHES[(story + 1) % len(FAST_FINISHES)] if fast else QUESTIONS[(story + 2) % len(QUESTIONS)]
    seg = tl.say(voice, "fast_finish" if fast else "question", q, a2.end_s + EPISODE_MARGIN_S, fast=fast)
    a3 = tl.answer(seg)
    barge = tl.say(voice, "barge_in", BARGE_INS[story % len(BARGE_INS)], a3.start_s + rng.uniform(1.1, 1.3),
                   over=len(tl.replies) - 1)  # fmt: skip
    tl.answer(barge)

    clean = tl.render(tail_s=2.0)
    audio = apply_condition(clean, condition, seed)
    script = Script(
        call=f"c{index:02d}-{voice.name}-{condition}",
        voice=voice.name,
        condition=condition,
        seed=seed,
        duration_s=round(audio.size / SAMPLE_RATE, 3),
        answers=texts,
        segments=tuple(tl.segments),
        replies=tuple(tl.replies),
        reply_latency_s=REPLY_LATENCY_S,
        notes={"story": story},
    )
    return script, audio


# -- the corpus ---------------------------------------------------------------------------------


def _cache_key(seed: int, calls: int) -> str:
    h = hashlib.sha256()
    for f in (HERE / "corpus.py", HERE / "script.py", WORKFLOW):  # what shapes the calls
        h.update(f.read_bytes())
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    h.update(f"{seed} {calls} {espeak}".encode())
    return h.hexdigest()


def plan(calls: int) -> list[tuple[int, int, str, str]]:
    """(index, story, voice, condition) of each call: story k in every voice and condition, then
    story k + 1, so the first N calls of the corpus are as balanced as N allows."""
    groups = [(v, c) for c in CONDITIONS for v in VOICES]
    return [(i, i // len(groups), *groups[i % len(groups)]) for i in range(calls)]


def generate(
    out: Path, *, seed: int = 2026, calls: int = len(VOICES) * len(CONDITIONS) * CALLS_PER_GROUP
) -> list[Path]:
    """Write out/<call>/caller.wav and script.json for every call; reuses a corpus made by the same
    generator, workflow, seed and espeak-ng. Returns the call directories."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("bench-conversation: espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    key = _cache_key(seed, calls)
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("key") == key:
        dirs = [out / c for c in json.loads(manifest.read_text())["calls"]]
        if all((d / "caller.wav").exists() and (d / "script.json").exists() for d in dirs):
            return dirs
    workflow = load_workflow(WORKFLOW)
    texts = answers(workflow)
    renders = asyncio.run(render_answers(workflow, texts))
    durations = {answer: pcm.size / SAMPLE_RATE for answer, pcm in renders.items()}
    dirs = []
    voices: dict[tuple[str, int], Voice] = {}
    for index, story, voice_name, condition in plan(calls):
        vkey = (voice_name, story)
        if vkey not in voices:
            voices[vkey] = hibari_voice(story) if voice_name == "hibari" else espeak_voice(story)
        script, audio = build_call(
            index, story, voices[vkey], condition, seed * 1000 + index, workflow, durations, texts
        )
        d = out / script.call
        d.mkdir(parents=True, exist_ok=True)
        write_wav(d / "caller.wav", [audio])
        script.write(d / "script.json")
        dirs.append(d)
        print(
            f"corpus: {script.call}  {script.duration_s:.0f} s, {len(script.segments)} caller lines",
            flush=True,
        )
    manifest.write_text(json.dumps({"key": key, "calls": [d.name for d in dirs]}, indent=1) + "\n")
    return dirs


def call_dirs(corpus: Path) -> Sequence[Path]:
    manifest = corpus / "manifest.json"
    if not manifest.exists():
        raise SystemExit(f"{corpus}: no corpus here (run the generator first)")
    return [corpus / c for c in json.loads(manifest.read_text())["calls"]]
