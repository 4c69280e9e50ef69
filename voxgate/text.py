"""Split text for synthesis into pieces a TTS engine handles with flat memory and low latency.

Piper's memory and latency grow with the length of one unpunctuated run (1,769 characters took
1.9 GB), and the first audio can only leave once the first piece is done. So: split at sentence
ends, then split any piece longer than ``max_chars`` at clause punctuation, then at spaces.
The first sentence is also cut at its first clause break ("Hello, | how can I help?"): the
listener hears the opening words while the rest of the sentence is synthesised.
"""

from __future__ import annotations

import re

# Latin punctuation ends a sentence only before white space; CJK full stops need none.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n+")
_MIN_FIRST_PIECE = 4  # characters; never send a lone "A," or "So," on its own
_CLAUSE_END = re.compile(r"(?<=[,;:\u2014])\s+|(?<=[\u3001\uff0c\uff1b\uff1a])\s*")


def split_for_synthesis(text: str, max_chars: int = 350) -> list[str]:
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = " ".join(sentence.split())
        if not sentence:
            continue
        if len(sentence) <= max_chars:
            pieces.append(sentence)
            continue
        parts: list[str] = []
        for clause in _CLAUSE_END.split(sentence):
            parts.extend(clause.split(" ") if len(clause) > max_chars else [clause])
        pieces.extend(_pack(parts, max_chars))
    if pieces:
        head, *tail = _CLAUSE_END.split(pieces[0], maxsplit=1)
        if tail and tail[0] and len(head) >= _MIN_FIRST_PIECE:
            pieces[0:1] = [head, tail[0]]
    return pieces


def _pack(parts: list[str], max_chars: int) -> list[str]:
    """Join consecutive parts with spaces while they fit in ``max_chars``; hard-cut any longer."""
    packed: list[str] = []
    current = ""
    for part in parts:
        while len(part) > max_chars:
            if current:
                packed.append(current)
                current = ""
            packed.append(part[:max_chars])
            part = part[max_chars:]
        if current and len(current) + 1 + len(part) > max_chars:
            packed.append(current)
            current = part
        else:
            current = f"{current} {part}" if current else part
    if current:
        packed.append(current)
    return packed
