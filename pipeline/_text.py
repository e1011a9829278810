"""Text helpers for the reply path: clause splitting for early TTS, backchannel detection."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—]\s")
_WORD = re.compile(r"[a-z']+(?:-[a-z']+)*")


@dataclass(frozen=True, slots=True)
class Clause:
    """A piece of a reply for TTS: its text (stripped), and where that text starts in everything
    pushed to the splitter, so what was heard can be named by character offset."""

    text: str
    start: int


class SentenceSplitter:
    """Cuts streamed LLM text into segments for TTS.

    The first segment of a reply may end at a clause (comma, colon...) once it is long enough,
    so speech starts before the LLM finishes the first sentence; later ones end at sentences,
    which sound more natural to the synthesizer.
    """

    def __init__(self, first_clause_min_chars: int = 16) -> None:
        self._buf = ""
        self._buf_start = 0
        self._first_min = first_clause_min_chars
        self._emitted = 0

    def push(self, delta: str) -> list[Clause]:
        self._buf += delta
        out: list[Clause] = []
        while True:
            m = _SENTENCE_END.search(self._buf)
            if self._emitted == 0 and self._first_min > 0:
                c = _CLAUSE_END.search(self._buf, self._first_min - 1)
                if c is not None and (m is None or c.start() < m.start()):
                    m = c
            if m is None:
                return out
            clause = self._take(m.end())
            if clause is not None:
                out.append(clause)
                self._emitted += 1

    def flush(self) -> list[Clause]:
        clause = self._take(len(self._buf))
        return [clause] if clause is not None else []

    def _take(self, end: int) -> Clause | None:
        raw, self._buf = self._buf[:end], self._buf[end:]
        start = self._buf_start + len(raw) - len(raw.lstrip())
        self._buf_start += end
        text = raw.strip()
        return Clause(text, start) if text else None


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


# Longest backchannel phrase, in words ("oh i see"), and how close a run of words must sound to
# one: small STT models write "uh-huh" as "Aha", "mm-hmm" as "Mhm", "alright" as "All right".
_PHRASE_MAX_WORDS = 3
_FUZZY_RATIO = 0.8
_FUZZY_MIN_CHARS = 4  # shorter keys ("no", "mm", "ok") must match exactly: one letter is a new word


# A word of only m, h and open vowels is a hum, not a word: what a small STT writes for a mumbled
# "mm-hmm" ("Mama", "Ahem", "Uhm", "Hmhm"). Two letters at least: "a" is a word.
_VOCABLE = re.compile(r"[mhaou'-]{2,}")


def _key(ws: Sequence[str]) -> str:
    return "".join(ws).replace("-", "").replace("'", "")


def _collapse_repeats(ws: list[str]) -> list[str]:
    """ "okay okay" -> "okay", "yeah yeah yeah" -> "yeah", "uh huh uh huh" -> "uh huh"."""
    out: list[str] = []
    for w in ws:
        out.append(w)
        for n in (1, 2):
            if len(out) >= 2 * n and out[-n:] == out[-2 * n : -n]:
                del out[-n:]
                break
    return out


def _phrase_units(said: Sequence[str], keys: frozenset[str]) -> int | None:
    """The fewest backchannel phrases that cover `said` word for word (fuzzily), or None."""

    def matches(key: str) -> bool:
        if key in keys or _VOCABLE.fullmatch(key):
            return True
        if len(key) < _FUZZY_MIN_CHARS:
            return False
        return any(
            len(k) >= _FUZZY_MIN_CHARS and difflib.SequenceMatcher(None, key, k).ratio() >= _FUZZY_RATIO
            for k in keys
        )

    best: list[int | None] = [0] + [None] * len(said)
    for end in range(1, len(said) + 1):
        for n in range(1, min(_PHRASE_MAX_WORDS, end) + 1):
            before = best[end - n]
            if before is not None and matches(_key(said[end - n : end])):
                best[end] = before + 1 if best[end] is None else min(best[end] or 0, before + 1)
    return best[-1]


# Words that take the floor however short the burst: "Stop.", "Wait.", "No.", "Sorry?", a question.
_FLOOR_WORDS = frozenset(
    "stop wait no nope not don't dont never hold hang sorry excuse pardon hello hey hi what why how "
    "when where who which cancel human person agent operator manager representative someone help "
    "actually but repeat again question problem speak talk listen enough quiet shut "
    # what Whisper tiny.en writes for a quick "wait, wait" over the agent
    "weight "
    # a number is an answer, not a murmur
    "zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty "
    "fifty hundred thousand".split()
)
_TOKEN = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")


@dataclass(frozen=True, slots=True)
class OverlapDecision:
    """What the caller's speech over the agent was, and why."""

    action: Literal["backchannel", "interrupt"]
    reason: Literal[
        "no_words", "backchannel_words", "short_burst", "too_long", "too_many_words",
        "not_a_backchannel", "takes_the_floor",
    ]  # fmt: skip
    words: tuple[str, ...]
    """The words the decision read (repetitions collapsed)."""


def classify_overlap(
    text: str,
    voiced_ms: float,
    phrases: Iterable[str],
    *,
    max_ms: float,
    max_phrases: int = 2,
    short_ms: float = 800.0,
) -> OverlapDecision:
    """Decide whether speech over the agent interrupts it, from the audio and the words.

    Words that take the floor ("stop", "wait", "no", "sorry", a question word) and numbers always
    interrupt, however short: "Stop." is as short as "Yeah." Otherwise:

    * a burst voiced for at most `short_ms` is a backchannel whatever the STT made of it: a small
      model writes a mumbled "uh-huh" or "mhm" over the agent as "a hul", "Come in", "It hurts",
      "For a minute", and a caller who takes the floor says more than that, or a floor word;
    * up to `max_ms`, it is a backchannel if it is at most `max_phrases` phrases that each sound
      like one of `phrases` once repetitions and punctuation are dropped ("Okay. Okay." is one
      "okay"; "Aha" is "uh-huh"; "All right" is "alright");
    * anything longer interrupts.

    No words at all (a cough, noise) is not an interruption either."""
    tokens = _TOKEN.findall(text.lower().replace("\u2019", "'"))
    said = _collapse_repeats(words(text))
    if not tokens:
        return OverlapDecision("backchannel", "no_words", ())
    if any(t in _FLOOR_WORDS or t[0].isdigit() for t in tokens):
        return OverlapDecision("interrupt", "takes_the_floor", tuple(tokens))
    if voiced_ms > max_ms:
        return OverlapDecision("interrupt", "too_long", tuple(said))
    if voiced_ms <= short_ms:
        return OverlapDecision("backchannel", "short_burst", tuple(said))
    keys = frozenset(_key(words(p)) for p in phrases if words(p))
    units = _phrase_units(said, keys)
    if units is None:
        return OverlapDecision("interrupt", "not_a_backchannel", tuple(said))
    if units > max_phrases:
        return OverlapDecision("interrupt", "too_many_words", tuple(said))
    return OverlapDecision("backchannel", "backchannel_words", tuple(said))


def is_backchannel(text: str, phrases: Iterable[str]) -> bool:
    """True when text is, word for word, one or two backchannel phrases ("uh-huh, yeah")."""
    decision = classify_overlap(text, 0.0, phrases, max_ms=float("inf"), short_ms=-1.0)
    return decision.action == "backchannel" and decision.reason == "backchannel_words"


def spoken_prefix(text: str, fraction: float) -> str:
    """The words of text heard when `fraction` of its audio was played (speech is roughly even):
    a prefix of `text` itself, cut after a whole word."""
    if fraction >= 1.0:
        return text
    spans = [m.end() for m in re.finditer(r"\S+", text)]
    n = int(len(spans) * max(fraction, 0.0))
    return text[: spans[n - 1]] if n else ""
