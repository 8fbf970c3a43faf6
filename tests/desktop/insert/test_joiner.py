"""The joiner: spacing, capitalisation and spoken commands between a dictation's finals."""

from __future__ import annotations

import pytest

from desktop.insert.joiner import (
    NEW_LINE,
    NEW_PARAGRAPH,
    SCRATCH,
    Backspace,
    Joiner,
    Text,
    capitalise,
    command_of,
    split_commands,
)


def typed(finals: list[str], preceding: str | None = None, commands: bool = True) -> str:
    """Apply the joiner's ops to a simulated field holding `preceding`; return the field."""
    field = preceding or ""
    j = Joiner(commands)
    j.reset(preceding)
    for text in finals:
        for op in j.feed(text):
            if isinstance(op, Backspace):
                assert op.count <= len(field) - len(preceding or "")  # never before the start
                field = field[: len(field) - op.count]
            else:
                field += op.text
        assert field == (preceding or "") + "".join(j.units)
    return field


@pytest.mark.parametrize(("finals", "expected"), [
    # a new sentence: one space, capitalised
    (["Hello there.", "how are you?"], "Hello there. How are you?"),
    (["Stop!", "go on"], "Stop! Go on"),
    (["He said “done.”", "then left"], "He said “done.” Then left"),
    (["(It ended.)", "next"], "(It ended.) Next"),
    # mid-sentence: one space, the model's casing kept
    (["I went to the", "Store and bought milk."], "I went to the Store and bought milk."),
    (["Dear John,", "how are you"], "Dear John, how are you"),
    (["one", "iPhone"], "one iPhone"),
    # the first segment: no leading space, casing as the model wrote it
    (["hello"], "hello"),
    # whitespace: stripped, runs collapsed; empty finals insert nothing
    (["  Hello   there.  ", "", "   ", "\tand\n more "], "Hello there. And more"),
    # punctuation that closes up to the left gets no space
    (["Wait", ", what?"], "Wait, what?"),
    (["50", "%"], "50%"),
    # capitalising skips opening quotes; digits are left alone
    (["Done.", "“really,” she said"], "Done. “Really,” she said"),
    (["Done.", "3 cats"], "Done. 3 cats"),
    # NFC: a decomposed é becomes one character
    (["cafe\u0301"], "café"),
])
def test_joining(finals: list[str], expected: str) -> None:
    assert typed(finals) == expected


@pytest.mark.parametrize(("preceding", "finals", "expected"), [
    ("", ["hello there."], "Hello there."),                 # an empty field: capitalised
    ("Notes: ", ["buy milk"], "Notes: buy milk"),           # ends with a space: none added
    ("The end.", ["next one"], "The end. Next one"),
    ("(", ["aside"], "(aside"),                             # after an opening bracket
    ("first line\n", ["second"], "first line\nSecond"),
    ("so", ["and so on"], "so and so on"),
])
def test_joining_after_known_preceding_text(preceding: str, finals: list[str],
                                            expected: str) -> None:
    assert typed(finals, preceding) == expected


@pytest.mark.parametrize(("clause", "command"), [
    ("new line", NEW_LINE), ("New line.", NEW_LINE), ("NEW LINE!", NEW_LINE),
    (" new-line ", NEW_LINE), ("Newline.", NEW_LINE),
    ("New paragraph.", NEW_PARAGRAPH), ("new paragraph", NEW_PARAGRAPH),
    ("Scratch that.", SCRATCH), ("scratch that!", SCRATCH),
    ("a new line", None), ("new lines", None), ("scratch", None), ("", None),
])
def test_command_words(clause: str, command: str | None) -> None:
    assert command_of(clause) == command


def test_commands_are_whole_clauses_at_start_end_or_between_sentences() -> None:
    assert split_commands("The end. New paragraph.") == [
        ("text", "The end."), ("command", NEW_PARAGRAPH)]
    assert split_commands("New line, dear John,") == [
        ("command", NEW_LINE), ("text", " dear John,")]
    assert split_commands("The end. New paragraph. Chapter two.") == [
        ("text", "The end."), ("command", NEW_PARAGRAPH), ("text", " Chapter two.")]
    # not a clause of its own: text
    assert split_commands("Start a new line here.") == [("text", "Start a new line here.")]
    assert split_commands("I need a new line of credit") == [
        ("text", "I need a new line of credit")]
    # text clauses keep exactly what the model wrote between commands
    assert split_commands("Pi is 3.14, roughly.") == [("text", "Pi is 3.14, roughly.")]


def test_new_line_and_paragraph() -> None:
    assert typed(["Dear John,", "new line", "how are you?"]) == "Dear John,\nHow are you?"
    assert typed(["The end. New paragraph.", "chapter two"]) == "The end.\n\nChapter two"
    assert typed(["Hello.", "New line.", "New line."]) == "Hello.\n\n"
    assert typed(["New paragraph.", "hi"], preceding="Text") == "Text\n\nHi"
    # no space before a newline, none after it
    j = Joiner()
    assert j.feed("one") == [Text("one")]
    assert j.feed("New line. two") == [Text("\nTwo")]  # "two" is a clause start: text


def test_commands_off_are_plain_text() -> None:
    assert typed(["Hello.", "New line.", "scratch that"], commands=False) == (
        "Hello. New line. Scratch that")


def test_scratch_that_removes_the_last_segment_with_its_separator() -> None:
    j = Joiner()
    j.feed("Hello there.")
    j.feed("ça va, très bien.")
    assert j.units == ["Hello there.", " Ça va, très bien."]
    assert j.feed("Scratch that.") == [Backspace(len(" Ça va, très bien."))]
    assert j.units == ["Hello there."]
    # the next segment joins to what precedes the cursor now
    assert j.feed("good.") == [Text(" Good.")]


def test_scratch_that_counts_newlines_and_repeats() -> None:
    j = Joiner()
    j.feed("One.")
    j.feed("two. New paragraph.")
    assert j.feed("Scratch that.") == [Backspace(len(" Two.\n\n"))]
    assert j.feed("scratch that") == [Backspace(len("One."))]
    assert j.feed("Scratch that.") == []  # nothing of this dictation left: nothing happens
    assert j.units == []
    assert j.feed("fresh start") == [Text("fresh start")]  # a dictation's start again


def test_scratch_that_never_touches_text_from_before_the_dictation() -> None:
    assert typed(["Scratch that.", "scratch that", "more"], preceding="Kept.") == "Kept. More"


def test_scratch_within_a_segment_costs_no_keystrokes() -> None:
    j = Joiner()
    j.feed("Keep this.")
    assert j.feed("Drop this. Scratch that. Use this.") == [Text(" Use this.")]
    assert j.feed("Oops. Scratch that.") == []
    # scratch at a segment's start removes the previous segment, then its text follows
    assert j.feed("Scratch that. Instead.") == [Backspace(len(" Use this.")),
                                                Text(" Instead.")]
    assert j.units == ["Keep this.", " Instead."]


def test_state_restore_undoes_a_feed() -> None:
    j = Joiner()
    j.feed("One.")
    saved = j.state()
    j.feed("two")
    j.feed("Scratch that. Scratch that.")
    j.restore(saved)
    assert j.units == ["One."]
    assert j.feed("two") == [Text(" Two")]


def test_reset_starts_a_new_dictation() -> None:
    j = Joiner()
    j.feed("One.")
    j.reset()
    assert j.units == []
    assert j.feed("two") == [Text("two")]
    assert j.feed("Scratch that.") == [Backspace(3)]


def test_capitalise() -> None:
    assert capitalise("hello") == "Hello"
    assert capitalise("“hi”") == "“Hi”"
    assert capitalise("'tis") == "'Tis"
    assert capitalise("3 cats") == "3 cats"
    assert capitalise("élan") == "Élan"
    assert capitalise("...") == "..."
