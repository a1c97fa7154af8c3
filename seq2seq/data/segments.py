"""What the translator searches for one input line: its sentences (a pasted paragraph is
translated sentence by sentence), and no part longer than the model was trained on.

A model trained on sentences of at most ``data.max_len`` pieces learns nothing about longer
ones, and searching them costs time and memory that grow with the input: one hostile line
could stall a tool. So a line is split at its sentence boundaries (sentencex, a maintained
rule-based segmenter), and a sentence still longer than the limit at the last word boundary
before it; the parts are translated and their translations joined with spaces.
"""

from __future__ import annotations

from collections.abc import Callable

from sentencex import segment


def sentences(text: str, lang: str) -> list[str]:
    """The sentences of ``text`` (one when it holds one), whitespace-normalised, empty ones dropped."""
    parts = [" ".join(s.split()) for s in segment(lang, text)]
    return [p for p in parts if p] or [" ".join(text.split())]


def within_limit(ids: list[int], limit: int, starts_word: Callable[[int], bool]) -> list[list[int]]:
    """``ids`` cut into pieces of at most ``limit`` ids, each cut at the last word start
    (``starts_word(id)``) before the limit when there is one, else at the limit."""
    out, start = [], 0  # cut by position: slicing off the rest each time is quadratic in the length
    while len(ids) - start > limit:
        cut = next((i for i in range(limit, 0, -1) if starts_word(ids[start + i])), limit)
        out.append(ids[start:start + cut])
        start += cut
    return [*out, ids[start:]] if start < len(ids) else out
