"""What PII detection reads of a text: a view with invisible and look-alike characters undone, and the
way back to the original's offsets.

A zero-width character splits a value for a program and not for a reader: "jo\\u200bhn@example.com" is
an address. Full-width forms ("ｊｏｈｎ＠ｅｘａｍｐｌｅ．ｃｏｍ") read as their ASCII letters, and
percent-encoded punctuation ("jane%40example.org") as the punctuation. The view drops or folds those;
a span found in the view maps back onto the original text, so what gets masked is the original's
characters, invisible ones included. Most texts hold none of them and are their own view.

The masking (tasks/pii/_engine.py) and the independent leak scan (tasks/pii/scan.py) both read texts
through this view; they share nothing else.
"""

from __future__ import annotations

import re

# Soft hyphen, zero-width space / non-joiner / joiner, word joiner, byte-order mark.
_INVISIBLE = frozenset("\u00ad\u200b\u200c\u200d\u2060\ufeff")
_PERCENT = {"40": "@", "2e": ".", "2d": "-", "5f": "_", "2b": "+", "3a": ":", "2f": "/", "20": " "}
_NEEDS_VIEW = re.compile(
    "[\u00ad\u200b-\u200d\u2060\ufeff\u3000\uff01-\uff5e]|%(?:40|2[eEdDbBfF0]|5[fF]|3[aA])"
)


class TextView:
    """`text`: the view; `span(start, end)`: a view span as a span of the original."""

    __slots__ = ("original", "text", "_starts", "_ends")

    def __init__(self, original: str):
        self.original = original
        if _NEEDS_VIEW.search(original) is None:
            self.text, self._starts, self._ends = original, None, None
            return
        chars: list[str] = []
        starts: list[int] = []
        ends: list[int] = []
        i, n = 0, len(original)
        while i < n:
            char = original[i]
            width = 1
            if char in _INVISIBLE:
                i += 1
                continue
            if char == "%" and i + 3 <= n and original[i + 1 : i + 3].lower() in _PERCENT:
                char, width = _PERCENT[original[i + 1 : i + 3].lower()], 3
            elif "\uff01" <= char <= "\uff5e":
                char = chr(ord(char) - 0xFEE0)
            elif char == "\u3000":
                char = " "
            chars.append(char)
            starts.append(i)
            ends.append(i + width)
            i += width
        self.text, self._starts, self._ends = "".join(chars), starts, ends

    @property
    def is_original(self) -> bool:
        return self._starts is None

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original's span under the view's [start, end) (invisible characters inside included)."""
        if self._starts is None or start >= end:
            return start, end
        return self._starts[start], self._ends[end - 1]
