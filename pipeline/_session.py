"""One call: caller frames in, agent frames out, turn-taking, barge-in and per-turn metrics.

The caller path is a plain method call per frame (VAD, STT push, barge-in check): no queue hop,
no task switch. Each reply runs in one task with two children, LLM -> clause splitter and
TTS -> playout, joined by a small bounded queue. Everything is owned by the session's TaskGroup
and cancelled when the call ends.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TypeVar, assert_never

import numpy as np
import structlog

from ._audio import FRAME_MS, FRAME_S
from ._clock import Clock
from ._dialogue import Conversation, EndCallEvent, HandoffEvent, ToolResultEvent
from ._end_of_turn import (
    WINDOW_S,
    EndOfTurnConfig,
    EndOfTurnError,
    EndOfTurnModel,
    EndOfTurnPrediction,
    decide_end_of_turn,
    shared_end_of_turn_model,
)
from ._errors import PipelineError
from ._events import (
    AgentHandoff,
    AgentSpeech,
    Backchannel,
    CallEnded,
    PipelineFault,
    SessionEvent,
    ToolCalled,
    TurnCompleted,
    TurnMetrics,
    Usage,
    UsageRecorded,
    UserSpeechStarted,
    UserTranscript,
)
from ._llm import LLMUsage, TextDelta
from ._playout import AudioSink, Playback, Playout, SegmentStats
from ._stt import STTSession, Transcript, Utterance
from ._text import Clause, SentenceSplitter, classify_overlap, spoken_prefix
from ._tts import TTS, whole_samples
from ._vad import Endpointer, VADConfig

log = structlog.get_logger("voicerun.pipeline")

DEFAULT_BACKCHANNELS = (
    "uh-huh", "uh huh", "mm-hmm", "mhm", "mm", "hmm", "aha", "yeah", "yep", "okay", "ok",
    "right", "all right", "sure", "i see", "got it", "oh", "oh okay", "oh i see", "i know",
    "of course", "great", "cool", "thanks", "thank you",
    # what Whisper tiny.en writes for a mumbled "uh-huh" over the agent
    "i thought",
)  # fmt: skip

T = TypeVar("T")

CallerAudio = AsyncIterator[bytes] | AsyncIterator[tuple[bytes, float]]
"""The caller's 20 ms frames, each bare or with the clock time it finished arriving at the
transport: a transport that queues frames stamps them, so that turn latencies start when the
caller's audio arrived, not when a loaded loop got round to it."""

_bound_agent: contextvars.ContextVar[object] = contextvars.ContextVar("voicerun_bound_agent", default=None)
"""Which handoff the current task's log context reflects (see VoiceSession._sync_log_agent)."""


@dataclass(eq=False, slots=True)
class _Segment:
    """One piece of a reply on its way to the caller: its words, who says them and in which voice
    (fixed when the words were generated, so a handoff mid-reply needs no marker in the queue),
    and how much of it was played."""

    text: str
    start: int
    """Where `text` starts in the reply's text stream (what Conversation.respond() yielded)."""
    agent: str | None
    """None: the call's first agent, before any handoff (its name is the first handoff's from)."""
    tts: TTS
    stats: SegmentStats = field(default_factory=SegmentStats)
    t_start: float | None = None
    """When its first frame went out."""


@dataclass(frozen=True, slots=True)
class TurnConfig:
    vad: VADConfig = field(default_factory=VADConfig)
    barge_in_ms: int = 60
    """Caller voiced this long over the agent pauses the agent (it resumes if it was a backchannel)."""
    barge_in_confirm_ms: int = 400
    """An energy onset over the agent (VADResult.onset) pauses it at once; unless the caller's
    speech starts within this long, the agent resumes where it paused. 0: only voiced speech
    (barge_in_ms) pauses the agent."""
    backchannel_max_ms: int = 1200
    """Overlapping speech longer than this interrupts whatever its words."""
    backchannels: tuple[str, ...] = DEFAULT_BACKCHANNELS
    first_clause_min_chars: int = 16
    max_buffer_s: float = 10.0
    """Agent audio synthesized ahead of playback before TTS is made to wait."""
    leading_silence_dbfs: float = -45.0
    """Quieter audio at the start of a reply is trimmed, so the caller does not wait through it."""
    end_of_turn: Literal["silence", "model"] = "silence"
    """silence: the turn ends after vad.end_silence_ms of silence. model: at each pause the
    end-of-turn model and the partial transcript decide (end_of_turn_config), and
    vad.end_silence_ms is only the fallback when the model has no answer."""
    end_of_turn_config: EndOfTurnConfig = field(default_factory=EndOfTurnConfig)

    def endpointer_vad(self) -> VADConfig:
        """The Endpointer's settings: with the model, silence alone ends a turn only at max_wait_ms."""
        if self.end_of_turn == "model":
            return replace(self.vad, end_silence_ms=self.end_of_turn_config.max_wait_ms)
        return self.vad


@dataclass(frozen=True, slots=True)
class SessionConfig:
    turn: TurnConfig = field(default_factory=TurnConfig)
    max_duration_s: float | None = None
    silence_timeout_s: float | None = None
    """Caller and agent both silent this long: the agent says `check_in`; silent as long again
    after it, the call ends with reason "silence_timeout". None: no limit."""
    check_in: str = "Are you still there?"


@dataclass(frozen=True, slots=True)
class CallSummary:
    reason: str
    duration_s: float
    usage: Usage
    turns: tuple[TurnMetrics, ...]
    turns_failed: int = 0
    """Caller turns that got no answer because a stage failed (STT, LLM or TTS)."""
    greeting_failed: bool = False

    @property
    def failed(self) -> bool:
        """Nothing the call tried worked: every caller turn failed (or, with none, the greeting)."""
        answered = sum(1 for t in self.turns if not t.failed)
        if self.turns_failed:
            return answered == 0
        return self.greeting_failed and not self.turns


@dataclass(eq=False)
class _Reply:
    user_text: str | None  # None for a line the agent says on its own (greeting)
    fixed_text: str | None = None
    t_last_voiced: float | None = None
    t_final: float | None = None
    t_commit: float = 0.0
    t_first_token: float | None = None
    t_tts_request: float | None = None
    t_tts_audio: float | None = None
    t_first_out: float | None = None
    segments: list[_Segment] = field(default_factory=list)
    """Those sent to TTS, in order."""
    handoff_from: str | None = None
    """Set when this reply handed off: the agent that began it."""
    paused: bool = False
    failed: bool = False
    """A stage failed (its fault was reported)."""
    end_call: bool = False
    task: asyncio.Task[None] | None = None
    playback: Playback | None = None
    """Its audio in the playout: cancelling it is what guarantees nothing more of it is heard."""

    def heard(self) -> str:
        return " ".join(p for _, p in self._heard_segments() if p)

    def heard_chars(self) -> int:
        """How far into its text stream the reply was heard: the offset that history is cut at."""
        parts = self._heard_segments()
        if not parts:
            return 0
        seg, part = parts[-1]
        return seg.start + len(part)

    def _heard_segments(self) -> list[tuple[_Segment, str]]:
        parts = []
        for seg in self.segments:
            if seg.stats.played == 0:
                break
            fraction = seg.stats.played / seg.stats.written if seg.stats.written else 0.0
            parts.append((seg, spoken_prefix(seg.text, fraction)))
            if fraction < 1.0:
                break
        return parts

    def heard_by_agent(self) -> list[tuple[str | None, float | None, str]]:
        """What was heard, one part per agent in order: (agent, when its first frame went out, text)."""
        groups: list[tuple[str | None, float | None, list[str]]] = []
        for seg, part in self._heard_segments():
            agent = seg.agent if seg.agent is not None else self.handoff_from
            if not groups or groups[-1][0] != agent:
                groups.append((agent, seg.t_start, []))
            groups[-1][2].append(part)
        return [(agent, t, " ".join(p for p in parts if p)) for agent, t, parts in groups]


@dataclass(eq=False)
class _Pause:
    """A pause inside the caller's utterance, while end_of_turn is "model": asked about once."""

    utt: Utterance
    task: asyncio.Task[None] | None = None
    end_after_ms: float | None = None
    """Silence at which the held decision ends the turn (None: not decided yet)."""


@dataclass(frozen=True, slots=True)
class AgentVoice:
    """How one agent listens and speaks: its STT session, its TTS and its turn-taking."""

    stt: STTSession
    tts: TTS
    turn: TurnConfig


class _StageFailed(Exception):
    """A reply's stage failed: carries which one, so the fault names it."""

    def __init__(self, stage: Literal["llm", "tts"], error: Exception) -> None:
        super().__init__(str(error))
        self.stage: Literal["llm", "tts"] = stage
        self.error = error


class VoiceSession:
    def __init__(
        self,
        *,
        stt: STTSession,
        tts: TTS,
        dialogue: Conversation,
        sink: AudioSink,
        clock: Clock,
        config: SessionConfig | None = None,
        on_event: Callable[[SessionEvent], None] | None = None,
        greeting: str | None = None,
        voices: Callable[[str], AgentVoice] | None = None,
        end_of_turn_model: EndOfTurnModel | None = None,
    ) -> None:
        """voices: an agent's own STT, TTS and turn settings, switched to at a handoff (without
        it, one voice serves the whole call). end_of_turn_model: for turn settings with
        end_of_turn "model" (without it, the process's shared model is loaded at the start when
        the first agent needs it)."""
        self.config = config or SessionConfig()
        self._turn = self.config.turn
        self._stt = stt
        self._tts = tts
        """The voice of the call's first agent (before any handoff)."""
        self._voices = voices
        self._next_turn: TurnConfig | None = None
        self.dialogue = dialogue
        self._clock = clock
        self._emit_cb = on_event
        self._greeting = greeting
        self._endpointer = Endpointer(self._turn.endpointer_vad())
        self._playout = Playout(clock, sink, self._turn.max_buffer_s)
        self._barge_in_frames = max(1, self._turn.barge_in_ms // FRAME_MS)
        self.usage = Usage()
        self.turns: list[TurnMetrics] = []
        self._tg: asyncio.TaskGroup | None = None
        self._work: set[asyncio.Task[Any]] = set()
        self._utt: Utterance | None = None
        self._utt_onset = 0.0
        self._voiced_run = 0
        self._onset_pause_s: float | None = None
        """When an energy onset paused the agent, until the caller's speech starts or it resumes."""
        self._reply: _Reply | None = None
        self._interrupting: asyncio.Task[None] | None = None
        self._carry_text = ""
        self._ended = asyncio.Event()
        self._end_reason = ""
        self._agent: str | None = None
        # Whose voice is listening and speaking: they follow a handoff at different points.
        self._listening: str | None = None
        self._utt_agent: str | None = None
        self._agent_binding: object = None
        self.end_of_turn_model = end_of_turn_model
        # The turn's audio for the end-of-turn model: pre-roll and speech, its last 8 s at most.
        self._turn_audio: deque[bytes] = deque(maxlen=int(WINDOW_S / FRAME_S) + 1)
        self._interim_text = ""
        self._pause: _Pause | None = None
        self._turns_failed = 0
        self._greeting_failed = False
        self._last_final: asyncio.Task[None] | None = None
        """The latest utterance's transcript task: each one commits after the one before it."""
        self._last_heard = 0.0
        """When the caller was last voiced, or the agent last finished a reply (silence timeout)."""
        self._caller_heard = 0.0
        """When the caller was last voiced (or pressed a key)."""

    # -- lifecycle ------------------------------------------------------------------------

    async def run(self, caller: CallerAudio) -> CallSummary:
        """Run the call until the caller hangs up and the agent finishes, end_call, or max duration."""
        if self._turn.end_of_turn == "model" and self.end_of_turn_model is None:
            self.end_of_turn_model = await shared_end_of_turn_model()
        t_start = self._clock.now()
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                playout = tg.create_task(self._playout.run(), name="playout")
                feed = tg.create_task(self._consume(caller), name="caller-audio")
                watchdog = None
                if self.config.max_duration_s:
                    watchdog = tg.create_task(self._watchdog(t_start + self.config.max_duration_s))
                self._last_heard = t_start
                silence = None
                if self.config.silence_timeout_s:
                    silence = tg.create_task(self._silence_watch(self.config.silence_timeout_s))
                if self._greeting:
                    self._start_reply(_Reply(user_text=None, fixed_text=self._greeting, t_commit=t_start))
                await self._ended.wait()
                self._sync_log_agent()
                reply, self._reply = self._reply, None
                if reply is not None:  # ended mid-reply: what the caller heard of it is kept
                    self._finish_turn(reply, reply.heard(), interrupted=True)
                for task in (playout, feed, watchdog, silence, *self._work):
                    if task is not None:
                        task.cancel()
        finally:
            if self._utt is not None:
                self._utt.cancel()
        t_end = self._clock.now()
        self.usage.call_seconds = t_end - t_start
        self._emit(CallEnded(reason=self._end_reason, t=t_end))
        return CallSummary(
            self._end_reason,
            t_end - t_start,
            self.usage,
            tuple(self.turns),
            turns_failed=self._turns_failed,
            greeting_failed=self._greeting_failed,
        )

    def end(self, reason: str) -> None:
        if not self._ended.is_set():
            self._end_reason = reason
            self._ended.set()

    async def _watchdog(self, deadline: float) -> None:
        await self._clock.sleep_until(deadline)
        log.info("call_max_duration_reached", max_duration_s=self.config.max_duration_s)
        self.end("max_duration")

    async def _silence_watch(self, timeout_s: float) -> None:
        """End a call nobody is in any more (a line left open): check in once, then end."""
        checked_in_at: float | None = None
        clock = self._clock
        while True:
            now = clock.now()
            if self._reply is not None or self._endpointer.in_speech or self._work:
                await clock.sleep_until(now + timeout_s)  # busy now: look again a timeout later
                continue
            if checked_in_at is not None and self._caller_heard > checked_in_at:
                checked_in_at = None  # the caller answered the check-in
            quiet_until = self._last_heard + timeout_s
            if now < quiet_until:
                await clock.sleep_until(quiet_until)
                continue
            if checked_in_at is None and self.config.check_in:
                log.info("caller_silent", silent_s=round(now - self._last_heard, 1), action="check_in")
                checked_in_at = now
                self._start_reply(_Reply(user_text=None, fixed_text=self.config.check_in, t_commit=now))
                continue
            log.info("caller_silent", silent_s=round(now - self._last_heard, 1), action="end_call")
            self.end("silence_timeout")
            return

    def submit_turn(self, text: str) -> None:
        """A caller turn that did not come through the microphone (keys pressed on a phone):
        answered like a spoken one, after any spoken turn still being transcribed, and it
        interrupts the agent. Ignored unless the call is running."""
        if self._tg is None or self._ended.is_set():
            return
        before = self._last_final
        self._last_final = self._spawn(self._submitted_turn(text, before), "submitted-turn")

    async def _submitted_turn(self, text: str, before: asyncio.Task[None] | None) -> None:
        if before is not None and not before.done():
            await asyncio.wait([before])
        now = self._clock.now()
        self._last_heard = self._caller_heard = now
        reply = self._reply
        if reply is not None:
            self._interrupt(reply, "submitted_turn", duration_ms=0.0)
        self._emit(UserTranscript(text=text, final=True, t=now))
        if self._interrupting is not None:
            await self._interrupting
            self._interrupting = None
        self._start_reply(_Reply(user_text=text, t_last_voiced=now, t_final=now, t_commit=now))

    async def _consume(self, caller: CallerAudio) -> None:
        clock = self._clock
        async for item in caller:
            if type(item) is tuple:
                self._on_frame(*item)
            else:
                self._on_frame(item, clock.now())  # type: ignore[arg-type]
        # The caller hung up (or the recording ended): close the open utterance, let the agent
        # finish what it is saying, then end.
        if self._utt is not None:
            self._end_utterance(self._clock.now())
        while self._work:
            await asyncio.wait(set(self._work))
        await self._playout.drained()
        self.end("user_ended")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        assert self._tg is not None
        # A task copies the context of the task that spawns it, which may predate a handoff.
        context = None
        if self._agent_binding is not None and _bound_agent.get() is not self._agent_binding:
            context = contextvars.copy_context()
            context.run(self._sync_log_agent)
        task = self._tg.create_task(coro, name=name, context=context)
        self._work.add(task)
        task.add_done_callback(self._work.discard)
        return task

    def _sync_log_agent(self) -> None:
        """Rebind `agent` in this task's log context if a handoff happened since it was bound."""
        if self._agent_binding is not None and _bound_agent.get() is not self._agent_binding:
            structlog.contextvars.bind_contextvars(agent=self._agent)
            _bound_agent.set(self._agent_binding)

    def _emit(self, event: SessionEvent) -> None:
        if self._emit_cb is not None:
            self._emit_cb(event)

    # -- caller audio path (runs once per 20 ms frame; keep it cheap) ---------------------

    def _on_frame(self, pcm: bytes, now: float) -> None:
        """One caller frame that finished arriving at `now` (the transport's time, which under
        load is earlier than the clock's when this runs: latencies start where the caller's
        silence starts)."""
        self._sync_log_agent()
        if self._next_turn is not None and not self._endpointer.in_speech:
            # A handoff changed turn-taking; it applies from the next utterance, never mid-way.
            self._apply_turn(self._next_turn)
        r = self._endpointer.process(pcm, now - FRAME_S)
        if r.voiced:
            self._voiced_run += 1
            self._last_heard = self._caller_heard = now
        else:
            self._voiced_run = 0
        model_turn = self._turn.end_of_turn == "model"
        if r.event == "start":
            self._utt_onset = r.onset_s
            self._emit(UserSpeechStarted(t=r.onset_s))
            self._utt = self._stt.begin(self._on_interim)
            self._utt_agent = self._listening
            self._interim_text = ""
            for frame in r.preroll:
                self._utt.push(frame, False)
            self._utt.push(pcm, True)
            if model_turn:
                self._turn_audio.clear()
                self._turn_audio.extend(r.preroll)
                self._turn_audio.append(pcm)
        elif self._utt is not None:
            self._utt.push(pcm, r.voiced)
            if r.event == "end":
                if model_turn:
                    log.info("end_of_turn", action="end", reason="max_wait",
                             silence_ms=round((now - r.last_voiced_s) * 1000))  # fmt: skip
                self._end_utterance(r.last_voiced_s)
            elif model_turn:
                self._turn_audio.append(pcm)
                self._watch_pause(r.voiced, now)

        reply = self._reply
        if reply is None:
            self._onset_pause_s = None
            return
        if not self._endpointer.in_speech:
            self._check_onset(reply, r.onset, now)
            return
        self._onset_pause_s = None  # the caller's speech started: words decide from here
        if not reply.paused and self._voiced_run >= self._barge_in_frames:
            # Stop talking at once; whether this was an interruption or a backchannel is decided
            # when the words are known.
            reply.paused = True
            self._playout.pause()
            log.debug("agent_paused_for_caller", onset_s=round(self._utt_onset, 3))
        elif reply.paused and r.voiced and (now - self._utt_onset) * 1000 >= self._turn.backchannel_max_ms:
            # Still voiced this long after the onset: no backchannel is that long, whatever its
            # words (the silence before the endpoint does not count).
            self._interrupt(reply, "too_long", duration_ms=(now - self._utt_onset) * 1000)

    def _check_onset(self, reply: _Reply, onset: bool, now: float) -> None:
        """Outside the caller's speech: pause the agent on an energy onset, so a word that starts
        unvoiced ("Stop", "Sorry") is not talked over for the 60-180 ms the VAD needs; resume
        where it paused if no speech follows (a click, a breath, a door)."""
        confirm_s = self._turn.barge_in_confirm_ms / 1000
        if self._onset_pause_s is not None:
            if reply.paused and now - self._onset_pause_s >= confirm_s:
                log.debug("agent_resumed_after_onset", onset_s=round(self._onset_pause_s, 3))
                self._onset_pause_s = None
                self._resume_if_paused()
        elif onset and confirm_s > 0 and not reply.paused:
            reply.paused = True
            self._onset_pause_s = now - FRAME_S
            self._playout.pause()
            log.debug("agent_paused_for_onset", onset_s=round(self._onset_pause_s, 3))

    def _on_interim(self, text: str) -> None:
        self._interim_text = text
        self._emit(UserTranscript(text=text, final=False, t=self._clock.now()))

    # -- end of turn with the model (end_of_turn: model) ----------------------------------

    def _watch_pause(self, voiced: bool, now: float) -> None:
        """Per frame inside an utterance: ask once per pause at ask_after_ms of silence, and end
        the turn when the held decision's wait runs out."""
        if voiced:
            self._drop_pause()  # the pause was inside the turn
            return
        assert self._utt is not None
        silence_ms = (now - self._endpointer.last_voiced_end_s) * 1000
        pause = self._pause
        if pause is None:
            if silence_ms >= self._turn.end_of_turn_config.ask_after_ms:
                pause = self._pause = _Pause(self._utt)
                audio = b"".join(self._turn_audio)
                pause.task = self._spawn(self._judge_pause(pause, audio), "end-of-turn")
        elif pause.end_after_ms is not None and silence_ms >= pause.end_after_ms:
            # The held decision's wait ran out with nothing new: it said "end" at this silence.
            log.info("end_of_turn", action="end", reason="waited", silence_ms=round(silence_ms))
            self._end_turn_now()

    def _drop_pause(self) -> None:
        pause, self._pause = self._pause, None
        if pause is not None and pause.task is not None and pause.task is not asyncio.current_task():
            pause.task.cancel()  # also frees its place in the model's queue

    def _end_turn_now(self) -> None:
        self._drop_pause()
        self._end_utterance(self._endpointer.end_now())

    async def _judge_pause(self, pause: _Pause, audio: bytes) -> None:
        config = self._turn.end_of_turn_config
        prediction = EndOfTurnPrediction(None, "busy")
        model = self.end_of_turn_model
        async with self._clock.busy():
            # The transcript of the pause is Whisper's speculative decode, which finalize()
            # reuses: waiting for it costs the reply nothing.
            results = await asyncio.gather(
                model.predict(audio) if model is not None else _no_prediction(),
                pause.utt.partial(),
                return_exceptions=True,
            )
        scored, partial = results
        if isinstance(scored, BaseException):
            if not isinstance(scored, EndOfTurnError):
                raise scored
            log.warning("end_of_turn_model_failed", error=str(scored))
        else:
            prediction = scored
        if isinstance(partial, BaseException):
            if not isinstance(partial, PipelineError):
                raise partial
            partial = None
        if self._pause is not pause:
            return  # the caller spoke again, or the turn ended meanwhile
        text = partial if partial is not None else self._interim_text
        last_voiced_s = self._endpointer.last_voiced_end_s
        silence_ms = (self._clock.now() - last_voiced_s) * 1000
        decision = decide_end_of_turn(config, prediction.p_complete, text, silence_ms)
        reply = self._reply
        backchannel = False
        if decision.action == "wait" and reply is not None and reply.paused and text:
            # Over the agent, a backchannel is over as soon as it is heard: the agent waits for
            # this decision before it goes on, so holding the turn would hold the agent silent.
            overlap = classify_overlap(
                text, (last_voiced_s - self._utt_onset) * 1000, self._turn.backchannels,
                max_ms=self._turn.backchannel_max_ms,
            )  # fmt: skip
            backchannel = overlap.action == "backchannel"
        log.info(
            "end_of_turn",
            action="end" if backchannel else decision.action,
            backchannel=backchannel,
            reason=decision.reason,
            p_complete=None if prediction.p_complete is None else round(prediction.p_complete, 3),
            cue=decision.cue,
            transcript=text,
            silence_ms=round(silence_ms),
            outcome=prediction.outcome,
            inference_ms=round(prediction.inference_ms),
        )
        if decision.action == "end" or backchannel:
            self._end_turn_now()
        else:
            pause.end_after_ms = silence_ms + decision.wait_ms

    def _end_utterance(self, last_voiced_s: float) -> None:
        self._drop_pause()
        utt, self._utt = self._utt, None
        assert utt is not None
        before = self._last_final
        self._last_final = self._spawn(
            self._finish_utterance(utt, self._utt_onset, last_voiced_s, self._utt_agent, before), "stt-final"
        )

    # -- turn decisions -------------------------------------------------------------------

    async def _finish_utterance(
        self,
        utt: Utterance,
        onset_s: float,
        last_voiced_s: float,
        agent: str | None,
        before: asyncio.Task[None] | None,
    ) -> None:
        transcript: Transcript | Exception
        try:
            async with self._clock.busy():
                transcript = await utt.finalize()
        except Exception as exc:
            transcript = exc
        # Utterances commit in the order they were spoken, even when an earlier one's transcript
        # is slower: the caller's words reach the dialogue as they said them.
        if before is not None and not before.done():
            await asyncio.wait([before])
        if isinstance(transcript, Exception):
            log.error("stt_failed", error=str(transcript), exc_info=transcript)
            self._emit(PipelineFault(stage="stt", error=str(transcript), t=self._clock.now()))
            self._turns_failed += 1
            self._resume_if_paused()
            return
        t_final = self._clock.now()
        self.usage.stt_audio_seconds += transcript.audio_s
        if transcript.audio_s:
            self._emit(
                UsageRecorded(
                    stage="stt",
                    agent=agent,
                    audio_seconds=transcript.audio_s,
                    served_by=transcript.served_by,
                    t=t_final,
                )
            )
        text = transcript.text.strip()
        reply = self._reply
        if reply is not None:
            duration_ms = (last_voiced_s - onset_s) * 1000
            decision = classify_overlap(
                text, duration_ms, self._turn.backchannels, max_ms=self._turn.backchannel_max_ms
            )
            if decision.action == "backchannel":
                # The reply goes on from the frame where it paused: nothing is regenerated.
                log.info("backchannel_ignored", reason=decision.reason, text=text,
                         words=list(decision.words), duration_ms=round(duration_ms))  # fmt: skip
                if text:
                    self._emit(Backchannel(text=text, t=t_final))
                self._resume_if_paused()
                return
            self._interrupt(reply, decision.reason, duration_ms=duration_ms, words=decision.words)
        if text:  # a backchannel is reported as one, above; this is a turn
            self._emit(UserTranscript(text=text, final=True, t=t_final))
        if self._interrupting is not None:
            await self._interrupting
            self._interrupting = None
        if not text:
            return
        if self._carry_text:
            text, self._carry_text = f"{self._carry_text} {text}", ""
        self._start_reply(
            _Reply(user_text=text, t_last_voiced=last_voiced_s, t_final=t_final, t_commit=self._clock.now())
        )

    def _resume_if_paused(self) -> None:
        reply = self._reply
        if reply is not None and reply.paused:
            reply.paused = False
            self._playout.resume()

    def _interrupt(
        self, reply: _Reply, reason: str, *, duration_ms: float, words: Sequence[str] = ()
    ) -> None:
        """Silence the reply now (before the next frame) and cancel its work. reason, duration_ms
        and words say why (for the log)."""
        self._reply = None
        assert reply.task is not None and reply.playback is not None
        reply.playback.cancel()
        self._playout.resume()
        heard = reply.heard()
        reply.task.cancel()
        why = {"reason": reason, "duration_ms": round(duration_ms), "words": list(words)}
        self._interrupting = self._spawn(self._after_interrupt(reply, heard, why), "interrupt")

    async def _after_interrupt(self, reply: _Reply, heard: str, why: dict[str, object]) -> None:
        assert reply.task is not None
        await asyncio.wait([reply.task])
        # History changes only after the reply task has unwound (it records what it generated).
        if reply.user_text is None:
            if heard:
                self.dialogue.add_assistant(heard)
        elif heard:
            self.dialogue.trim_last_reply(reply.heard_chars())
        else:
            self._carry_text = self.dialogue.retract_turn()
        log.info("agent_interrupted", heard=heard, **why)
        self._finish_turn(reply, heard, interrupted=True)

    def _finish_turn(self, reply: _Reply, heard: str, *, interrupted: bool) -> None:
        self._sync_log_agent()
        now = self._clock.now()
        if heard and reply.handoff_from is None:
            self._emit(AgentSpeech(text=heard, t=reply.t_first_out or now, interrupted=interrupted))
        elif heard:
            parts = [p for p in reply.heard_by_agent() if p[2]]
            for n, (agent, t, text) in enumerate(parts):
                last = n == len(parts) - 1
                self._emit(AgentSpeech(text=text, t=t or now, interrupted=interrupted and last, agent=agent))
        if reply.user_text is None or reply.t_last_voiced is None or reply.t_final is None:
            return

        def ms(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        metrics = TurnMetrics(
            eou_delay_ms=ms(reply.t_last_voiced, reply.t_commit) or 0.0,
            stt_latency_ms=ms(reply.t_last_voiced, reply.t_final) or 0.0,
            llm_ttft_ms=ms(reply.t_commit, reply.t_first_token),
            tts_ttfb_ms=ms(reply.t_tts_request, reply.t_tts_audio),
            e2e_latency_ms=ms(reply.t_last_voiced, reply.t_first_out),
            interrupted=interrupted,
            failed=reply.failed,
        )
        self.turns.append(metrics)
        log.info("turn_completed", **{k: getattr(metrics, k) for k in metrics.__slots__})
        self._emit(TurnCompleted(metrics=metrics, t=now))

    # -- the reply ------------------------------------------------------------------------

    def _start_reply(self, reply: _Reply) -> None:
        self._reply = reply
        reply.playback = self._playout.open()
        reply.task = self._spawn(self._run_reply(reply), "reply")

    async def _run_reply(self, reply: _Reply) -> None:
        segments: asyncio.Queue[_Segment | None] = asyncio.Queue(maxsize=8)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._generate(reply, segments), name="reply-llm")
                tg.create_task(self._speak(reply, segments), name="reply-tts")
            assert reply.playback is not None
            await reply.playback.drained()
        except* _StageFailed as group:
            reply.failed = True
            if reply.user_text is None:
                self._greeting_failed = True
            else:
                self._turns_failed += 1
            for exc in group.exceptions:
                assert isinstance(exc, _StageFailed)
                log.error("reply_failed", stage=exc.stage, error=str(exc), exc_info=exc.error)
                self._emit(PipelineFault(stage=exc.stage, error=str(exc), t=self._clock.now()))
        if self._reply is reply:
            self._reply = None
            self._last_heard = self._clock.now()
            heard = reply.heard()
            if reply.user_text is None and heard:
                self.dialogue.add_assistant(heard)
            self._finish_turn(reply, heard, interrupted=False)
            if reply.end_call:
                self.end("agent_ended")

    async def _busy_iter(self, stream: AsyncIterator[T]) -> AsyncIterator[T]:
        """Iterate a provider stream, telling the clock that each wait is real work."""
        while True:
            try:
                async with self._clock.busy():
                    item = await anext(stream)
            except StopAsyncIteration:
                return
            yield item

    def _apply_turn(self, turn: TurnConfig) -> None:
        self._next_turn = None
        self._turn = turn
        self._endpointer = Endpointer(turn.endpointer_vad())
        self._barge_in_frames = max(1, turn.barge_in_ms // FRAME_MS)

    def _switch_listening(self, agent: str) -> None:
        """The new agent's STT and turn settings, from the caller's next utterance."""
        if self._voices is None:
            return
        voice = self._voices(agent)
        self._listening = agent
        self._stt = voice.stt
        if voice.turn != self._turn:
            self._next_turn = voice.turn

    def _segment(self, clause: Clause) -> _Segment:
        """Words of the agent in charge now, in its voice."""
        agent = self._agent
        tts = self._voices(agent).tts if self._voices is not None and agent is not None else self._tts
        return _Segment(clause.text, clause.start, agent, tts)

    def _on_handoff(self, reply: _Reply, ev: HandoffEvent) -> None:
        from_agent = ev.from_agent if ev.from_agent is not None else self._agent
        if reply.handoff_from is None:
            reply.handoff_from = from_agent
        self._agent = ev.to
        self._switch_listening(ev.to)
        self._agent_binding = object()
        self._sync_log_agent()
        log.info("agent_handoff", from_agent=from_agent, to_agent=ev.to)
        self._emit(AgentHandoff(from_agent=from_agent, to_agent=ev.to, t=self._clock.now()))

    async def _generate(self, reply: _Reply, out: asyncio.Queue[_Segment | None]) -> None:
        try:
            await self._generate_text(reply, out)
        except Exception as exc:
            raise _StageFailed("llm", exc) from exc

    async def _generate_text(self, reply: _Reply, out: asyncio.Queue[_Segment | None]) -> None:
        splitter = SentenceSplitter(self._turn.first_clause_min_chars)
        if reply.fixed_text is not None:
            for clause in [*splitter.push(reply.fixed_text), *splitter.flush()]:
                await out.put(self._segment(clause))
            await out.put(None)
            return
        assert reply.user_text is not None
        async for ev in self._busy_iter(self.dialogue.respond(reply.user_text)):
            if isinstance(ev, TextDelta):
                if reply.t_first_token is None:
                    reply.t_first_token = self._clock.now()
                for clause in splitter.push(ev.text):
                    await out.put(self._segment(clause))
            elif isinstance(ev, LLMUsage):
                self.usage.llm_prompt_tokens += ev.prompt_tokens
                self.usage.llm_completion_tokens += ev.completion_tokens
                self.usage.llm_cached_tokens += ev.cached_tokens
                self._emit(
                    UsageRecorded(
                        stage="llm",
                        agent=self._agent,
                        prompt_tokens=ev.prompt_tokens,
                        completion_tokens=ev.completion_tokens,
                        cached_tokens=ev.cached_tokens,
                        served_by=ev.served_by,
                        t=self._clock.now(),
                    )
                )
            elif isinstance(ev, ToolResultEvent):
                self._emit(
                    ToolCalled(
                        name=ev.call.name,
                        arguments=dict(ev.call.arguments),
                        result=ev.outcome.result,
                        is_error=ev.outcome.is_error,
                        t=self._clock.now(),
                    )
                )
            elif isinstance(ev, EndCallEvent):
                reply.end_call = True
            elif isinstance(ev, HandoffEvent):
                # What the old agent said is its own segment; the rest is the new agent's.
                for clause in splitter.flush():
                    await out.put(self._segment(clause))
                self._on_handoff(reply, ev)
            else:
                assert_never(ev)
        for clause in splitter.flush():
            await out.put(self._segment(clause))
        await out.put(None)

    async def _speak(self, reply: _Reply, segments: asyncio.Queue[_Segment | None]) -> None:
        try:
            await self._speak_segments(reply, segments)
        except Exception as exc:
            raise _StageFailed("tts", exc) from exc

    async def _speak_segments(self, reply: _Reply, segments: asyncio.Queue[_Segment | None]) -> None:
        playback = reply.playback
        assert playback is not None
        while (seg := await segments.get()) is not None:
            first_of_reply = not reply.segments
            reply.segments.append(seg)
            self.usage.tts_characters += len(seg.text)
            if reply.t_tts_request is None:
                reply.t_tts_request = self._clock.now()
            trimming = first_of_reply
            tts = seg.tts
            synthesis = tts.synthesis(seg.text)
            try:
                # Any TTS may cut its PCM mid-sample; the trim below and the playout need samples.
                async for pcm in self._busy_iter(whole_samples(aiter(synthesis), tts.name)):
                    if reply.t_tts_audio is None:
                        reply.t_tts_audio = self._clock.now()
                    if trimming:
                        pcm = _trim_leading_silence(pcm, self._turn.leading_silence_dbfs)
                        if not pcm:
                            continue
                        trimming = False
                    on_start = self._on_segment_start(reply, seg) if seg.stats.written == 0 else None
                    await playback.write(pcm, seg.stats, on_start)
            finally:
                # Sent is billed, even when a barge-in cuts the segment short, to the provider
                # that spoke this segment (a fallback chain's answer for this request).
                self._emit(
                    UsageRecorded(
                        stage="tts",
                        agent=seg.agent,
                        characters=len(seg.text),
                        served_by=synthesis.served_by,
                        t=self._clock.now(),
                    )
                )

    @staticmethod
    def _on_segment_start(reply: _Reply, seg: _Segment) -> Callable[[float], None]:
        def started(t: float) -> None:
            seg.t_start = t
            if reply.t_first_out is None:
                reply.t_first_out = t

        return started


async def _no_prediction() -> EndOfTurnPrediction:
    return EndOfTurnPrediction(None, "busy")


def _trim_leading_silence(pcm: bytes, threshold_dbfs: float) -> bytes:
    x = np.frombuffer(pcm, "<i2")
    if not x.size:
        return pcm
    level = 32768.0 * 10 ** (threshold_dbfs / 20)
    loud = np.flatnonzero(np.abs(x.astype(np.int32)) > level)
    if not loud.size:
        return b""
    start = max(0, int(loud[0]) - 16)  # keep 1 ms so the attack is not clipped
    return x[start:].tobytes()


def turn_summary(turns: Sequence[TurnMetrics]) -> dict[str, float | None]:
    """Means of the per-turn latencies, as the call metrics object reports them."""

    def mean(values: list[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return round(sum(vals) / len(vals), 1) if vals else None

    return {
        "stt_latency_ms": mean([t.stt_latency_ms for t in turns]),
        "llm_latency_ms": mean([t.llm_ttft_ms for t in turns]),
        "tts_latency_ms": mean([t.tts_ttfb_ms for t in turns]),
        "e2e_latency_ms": mean([t.e2e_latency_ms for t in turns]),
    }
