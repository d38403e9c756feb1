"""Stop strings over streamed text: emit what is safe, hold back what may start a stop string.

Tokens do not align with strings ("</ans" + "wer>"), so a stop string is matched on the decoded
text: ``push`` returns the text that can be shown now, keeping back the longest tail that is
still the beginning of some stop string; once one matches, everything from it on is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStrings:
    def __init__(self, stops: Sequence[str] = ()):
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def _held(self, text: str) -> int:
        """Length of the longest tail of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:n]):
                    best = n
                    break
        return best

    def push(self, piece: str) -> str:
        """The text that can be emitted after ``piece``; sets ``stopped`` when a stop string appears."""
        if self.stopped:
            return ""
        text = self.pending + piece
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped, self.pending = True, ""
            return text[: min(found)]
        held = self._held(text)
        self.pending = text[len(text) - held:]
        return text[: len(text) - held]

    def flush(self) -> str:
        """What was held back, at the end of generation (it never became a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out
