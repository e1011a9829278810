"""Text helpers for the reply path: clause splitting for early TTS, backchannel detection."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s")
_CLAUSE_END = re.compile(r"[,;:—]\s")
_WORD = re.compile(r"[a-z']+(?:-[a-z']+)*")


class SentenceSplitter:
    """Cuts streamed LLM text into segments for TTS.

    The first segment of a reply may end at a clause (comma, colon...) once it is long enough,
    so speech starts before the LLM finishes the first sentence; later ones end at sentences,
    which sound more natural to the synthesizer.
    """

    def __init__(self, first_clause_min_chars: int = 16) -> None:
        self._buf = ""
        self._first_min = first_clause_min_chars
        self._emitted = 0

    def push(self, delta: str) -> list[str]:
        self._buf += delta
        out: list[str] = []
        while True:
            m = _SENTENCE_END.search(self._buf)
            if self._emitted == 0 and self._first_min > 0:
                c = _CLAUSE_END.search(self._buf, self._first_min - 1)
                if c is not None and (m is None or c.start() < m.start()):
                    m = c
            if m is None:
                return out
            seg, self._buf = self._buf[: m.end()].strip(), self._buf[m.end() :]
            if seg:
                out.append(seg)
                self._emitted += 1

    def flush(self) -> list[str]:
        seg, self._buf = self._buf.strip(), ""
        return [seg] if seg else []


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def is_backchannel(text: str, phrases: Iterable[str]) -> bool:
    """True when every word of text belongs to one of the backchannel phrases ("uh-huh, yeah")."""
    said = words(text)
    if not said:
        return False
    allowed = {w for p in phrases for w in words(p)}
    return all(w in allowed for w in said)


def spoken_prefix(text: str, fraction: float) -> str:
    """The words of text heard when `fraction` of its audio was played (speech is roughly even)."""
    if fraction >= 1.0:
        return text
    tokens = text.split()
    n = int(len(tokens) * max(fraction, 0.0))
    return " ".join(tokens[:n])
