"""Turn each final's text into edit operations at the cursor: joining + spoken commands.

Pure logic, no I/O, no Qt. One `Joiner` per dictation (`reset()` starts a new one). Feed it
the finals in order (`feed(text)`); it returns the operations to apply at the cursor,
`Backspace(n)` then `Text(s)`, and remembers what it inserted per segment so that
"scratch that" can remove it. Partials are never given to it. Not thread-safe (the
inserter calls it on the GUI thread only).

Text is Unicode NFC throughout, so "é" is one character and one backspace removes it.

Joining (between what precedes the cursor and a new piece of text P)
--------------------------------------------------------------------
P has its surrounding whitespace stripped and every run of whitespace inside it collapsed
to one space ("no double spaces"). An empty P inserts nothing. Then, by what precedes:

| what precedes the cursor                          | separator | P's first letter   |
|---------------------------------------------------|-----------|--------------------|
| unknown (a dictation's start, `reset()` without   | none      | as the model wrote |
| `preceding`)                                      |           |                    |
| nothing (`reset(preceding="")`: an empty field)   | none      | capitalised        |
| text ending in `.` `!` `?` `…` (closing quotes or | one space | capitalised        |
| brackets after it allowed)                        |           |                    |
| a newline (a "new line"/"new paragraph")          | none      | capitalised        |
| other whitespace, or an opening `( [ { “ ‘ « ¿ ¡`| none      | as the model wrote |
| anything else (mid-sentence: a letter, `,` `;`)   | one space | as the model wrote |

No separator either when P starts with punctuation that closes up to the left
(`, . ; : ! ? … ) ] } ” ’ %`). "Capitalised" upper-cases P's first letter when nothing but
opening quotes/brackets precede it in P (a leading digit is left alone); the rest of P
keeps the model's casing.

Spoken commands (on unless `spoken_commands=False`)
---------------------------------------------------
A segment is cut into clauses at the punctuation `. , ! ? ; : …` (each clause keeps the
punctuation that ends it). A clause is a command when its words, lower-cased with all
punctuation dropped (words are runs of letters, digits and apostrophes), are exactly one
of:

| words                         | effect                                                |
|-------------------------------|-------------------------------------------------------|
| `new line` or `newline`       | insert "\\n" (no space before it)                     |
| `new paragraph`               | insert "\\n\\n" (no space before it)                  |
| `scratch that`                | remove the last inserted unit (below)                 |

So "New line." / "new line" / "NEW LINE!" as a whole segment, or as a clause at its start
or end ("The end. New paragraph." / "New paragraph, chapter two."), or between sentences
("The end. New paragraph. Chapter two."), are commands; "start a new line here" is text
(the words are not a clause of their own), and so is a segment with spoken commands off.
The punctuation that ends a command clause is dropped; text clauses keep theirs, and runs
of text clauses between commands are joined back exactly as the model wrote them.

Units and "scratch that": what one segment inserts is one unit (its text and newlines,
with the separator before it). "scratch that" removes, with one backspace per character
(the separator included), the text its own segment inserted before the command if there
is any, else the last earlier unit of this dictation still standing; with nothing left it
does nothing (text from before the dictation is never touched). Scratching text of the
same segment costs no keystrokes: it was never sent. After a removal, joining is computed
from what precedes the cursor then.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# what a model's sentence-final punctuation looks like, possibly followed by closers
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]}»]*$")
_OPENERS = "([{\"“‘'«¿¡"  # before a letter in a piece: the letter still starts it
_OPENS_RIGHT = "([{“‘«¿¡"  # at the end of what precedes: no space after it
_CLOSES_LEFT = ",.;:!?…)]}”’%»"
_CLAUSE = re.compile(r"[^.,!?;:…]*[.,!?;:…]*")
_WORD = re.compile(r"[\w']+")
_SPACES = re.compile(r"\s+")

NEW_LINE = "new_line"
NEW_PARAGRAPH = "new_paragraph"
SCRATCH = "scratch"
COMMANDS: dict[tuple[str, ...], str] = {
    ("new", "line"): NEW_LINE,
    ("newline",): NEW_LINE,
    ("new", "paragraph"): NEW_PARAGRAPH,
    ("scratch", "that"): SCRATCH,
}
_NEWLINES = {NEW_LINE: "\n", NEW_PARAGRAPH: "\n\n"}


@dataclass(frozen=True)
class Text:
    """Insert `text` at the cursor ("\\n" is a line break)."""

    text: str


@dataclass(frozen=True)
class Backspace:
    """Delete `count` characters before the cursor."""

    count: int


Op = Text | Backspace


def normalise_words(text: str) -> tuple[str, ...]:
    """The words of `text`, lower-cased, punctuation dropped ("New line." -> new, line)."""
    return tuple(w.lower() for w in _WORD.findall(unicodedata.normalize("NFC", text)))


def command_of(clause: str) -> str | None:
    """The command a clause is, or None: NEW_LINE, NEW_PARAGRAPH or SCRATCH."""
    return COMMANDS.get(normalise_words(clause))


def split_commands(text: str, spoken_commands: bool = True) -> list[tuple[str, str]]:
    """The segment as ("text", raw) and ("command", name) parts, in order (see module doc)."""
    if not spoken_commands:
        return [("text", text)]
    parts: list[tuple[str, str]] = []
    pending = ""
    for clause in _CLAUSE.findall(text):
        if not clause:
            continue
        cmd = command_of(clause)
        if cmd is None:
            pending += clause
            continue
        if pending.strip():
            parts.append(("text", pending))
        pending = ""
        parts.append(("command", cmd))
    if pending.strip():
        parts.append(("text", pending))
    return parts


def clean(text: str) -> str:
    """NFC, stripped, inner whitespace runs collapsed to one space."""
    return _SPACES.sub(" ", unicodedata.normalize("NFC", text)).strip()


def capitalise(text: str) -> str:
    """Upper-case the first letter when only opening quotes/brackets precede it."""
    for i, ch in enumerate(text):
        if ch.isalpha():
            return text[:i] + ch.upper() + text[i + 1:]
        if ch not in _OPENERS:
            return text
    return text


def join(preceding: str | None, piece: str) -> str:
    """`piece` (already clean, non-empty) with its separator and casing after `preceding`
    (None: unknown). See the module doc's table."""
    if preceding is None:
        return piece
    if preceding == "":
        return capitalise(piece)
    last = preceding[-1]
    if last == "\n":
        return capitalise(piece)
    sentence_start = bool(_SENTENCE_END.search(preceding))
    if sentence_start:
        piece = capitalise(piece)
    if last.isspace() or last in _OPENS_RIGHT:
        return piece
    if piece[0] in _CLOSES_LEFT:
        return piece
    return " " + piece


class Joiner:
    """Joining state for one dictation. See the module doc for the rules."""

    def __init__(self, spoken_commands: bool = True) -> None:
        self.spoken_commands = spoken_commands
        self.reset()

    def reset(self, preceding: str | None = None) -> None:
        """A new dictation: forget the units. `preceding`: the text before the cursor when
        known ("" for an empty field), None when unknown."""
        self._preceding = preceding
        self._units: list[str] = []

    @property
    def units(self) -> list[str]:
        """What each segment still standing inserted (separator included), in order."""
        return list(self._units)

    def _before(self, current: str) -> str | None:
        text = "".join(self._units) + current
        if self._preceding is None:
            return text or None
        return self._preceding + text

    def feed(self, text: str) -> list[Op]:
        """The operations that insert one final's text; updates the units."""
        ops: list[Op] = []
        current = ""
        for kind, value in split_commands(text, self.spoken_commands):
            if kind == "text":
                piece = clean(value)
                if piece:
                    current += join(self._before(current), piece)
            elif value == SCRATCH:
                if current:
                    current = ""
                elif self._units:
                    ops.append(Backspace(len(self._units.pop())))
            else:
                current += _NEWLINES[value]
        if current:
            self._units.append(current)
            ops.append(Text(current))
        return ops

    def state(self) -> tuple[str | None, list[str]]:
        """An opaque copy of the state, for `restore()` (undo a feed that failed to apply)."""
        return self._preceding, list(self._units)

    def restore(self, state: tuple[str | None, list[str]]) -> None:
        self._preceding, units = state
        self._units = list(units)
