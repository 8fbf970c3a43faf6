"""Dictation history store: real SQLite files in tmp_path, no mocks of SQLite; deleting a
dictation deletes its journaled audio (a real Journal in tmp_path); owner-only file modes."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import srt
import webvtt

from desktop import history as history_mod
from desktop.history import DictationNotFound, History, fts_phrases
from desktop.journal import Journal
from edge_server.formats import Transcript
from tests.file_modes import mode, posix_only

T0 = datetime(2026, 11, 22, 14, 3, tzinfo=UTC)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


@pytest.fixture
def hist(db_path: Path):
    with History(db_path) as h:
        yield h


def add_text(h: History, did: int, texts: list[str], step: float = 1.5) -> None:
    for i, text in enumerate(texts):
        h.add_segment(did, i, i * step, (i + 1) * step, text)


def fts_rows(h: History, table: str, phrase: str) -> list[dict]:
    return list(h.db.query(f"SELECT rowid FROM {table}_fts WHERE {table}_fts MATCH ?", [phrase]))


def assert_fts_consistent(h: History) -> None:
    for table in ("segments_fts", "dictations_fts"):  # raises if index and content disagree
        h.db.execute(f"INSERT INTO {table}({table}) VALUES('integrity-check')")


# -- creating and writing ------------------------------------------------------------------


def test_start_dictation_defaults(hist: History) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    did = hist.start_dictation()
    rec = hist.get(did)
    assert isinstance(did, int)
    assert re.fullmatch(r"Dictation \d{4}-\d{2}-\d{2} \d{2}:\d{2}", rec.title)
    assert rec.server == "local"
    assert rec.audio_path is None
    assert rec.status == "recording"
    assert rec.duration == 0.0
    assert rec.segments == ()
    assert rec.created.utcoffset() == timedelta(0)
    assert before <= rec.created <= datetime.now(UTC) + timedelta(seconds=1)
    # stored as ISO-8601 UTC text
    stored = hist.db.table("dictations").get(did)["created"]
    assert datetime.fromisoformat(stored) == rec.created
    assert stored.endswith("+00:00")


def test_default_title_uses_local_time_of_created(hist: History) -> None:
    did = hist.start_dictation(created=T0)
    assert hist.get(did).title == f"Dictation {T0.astimezone():%Y-%m-%d %H:%M}"


def test_start_dictation_with_title_server_and_audio(hist: History, tmp_path: Path) -> None:
    audio = tmp_path / "journal" / "a.wav"
    did = hist.start_dictation("  Standup notes ", server="gpu-box.lan:8765", audio_path=audio)
    rec = hist.get(did)
    assert rec.title == "Standup notes"
    assert rec.server == "gpu-box.lan:8765"
    assert rec.audio_path == str(audio)
    assert hist.start_dictation("   ") != did  # blank title falls back to the default
    assert hist.get(did + 1).title.startswith("Dictation ")


def test_segments_out_of_order_and_redelivered_are_deduped(hist: History) -> None:
    did = hist.start_dictation("t")
    hist.add_segment(did, 2, 4.0, 6.0, "third")
    hist.add_segment(did, 0, 0.0, 2.0, "first")
    hist.add_segment(did, 1, 2.0, 4.0, "second")
    hist.add_segment(did, 1, 2.0, 4.0, "second")  # re-delivered as is
    hist.add_segment(did, 2, 4.0, 6.5, "third, revised")  # re-delivered with new text
    rec = hist.get(did)
    assert [s.segment for s in rec.segments] == [0, 1, 2]
    assert [s.text for s in rec.segments] == ["first", "second", "third, revised"]
    assert rec.segments[2].end == 6.5
    assert rec.text == "first second third, revised"
    assert hist.db.table("segments").count == 3
    assert fts_rows(hist, "segments", '"third"') != []
    assert hist.search("revised")[0].id == did
    assert_fts_consistent(hist)


def test_same_segment_number_in_two_dictations_is_not_a_duplicate(hist: History) -> None:
    a, b = hist.start_dictation("a"), hist.start_dictation("b")
    hist.add_segment(a, 0, 0, 1, "alpha")
    hist.add_segment(b, 0, 0, 1, "beta")
    assert hist.get(a).text == "alpha"
    assert hist.get(b).text == "beta"


def test_add_segment_to_unknown_dictation(hist: History) -> None:
    with pytest.raises(DictationNotFound, match="no dictation with id 99"):
        hist.add_segment(99, 0, 0.0, 1.0, "orphan")
    assert hist.db.table("segments").count == 0


def test_get_unknown_id_is_a_key_error_with_a_clear_message(hist: History) -> None:
    with pytest.raises(KeyError) as info:
        hist.get(42)
    assert isinstance(info.value, DictationNotFound)
    assert info.value.dictation_id == 42
    assert str(info.value) == "no dictation with id 42 in the history"


def test_finish(hist: History) -> None:
    did = hist.start_dictation("t")
    hist.finish(did, 12.25)
    rec = hist.get(did)
    assert (rec.status, rec.duration) == ("done", 12.25)
    other = hist.start_dictation("crashed")
    hist.finish(other, 3, status="recovered")
    assert hist.get(other).status == "recovered"


@pytest.mark.parametrize(
    ("duration", "status"),
    [(1.0, "recording"), (1.0, "bogus"), (-1.0, "done"), (float("nan"), "done")],
)
def test_finish_rejects_bad_values(hist: History, duration: float, status: str) -> None:
    did = hist.start_dictation("t")
    with pytest.raises(ValueError):
        hist.finish(did, duration, status=status)  # type: ignore[arg-type]
    assert hist.get(did).status == "recording"


def test_finish_unknown_id(hist: History) -> None:
    with pytest.raises(DictationNotFound):
        hist.finish(7, 1.0)


# -- listing -------------------------------------------------------------------------------


def test_list_newest_first_with_limit(hist: History) -> None:
    ids = {}
    for name, minutes in [("middle", 5), ("oldest", 0), ("newest", 10)]:
        ids[name] = hist.start_dictation(name, created=T0 + timedelta(minutes=minutes))
    assert [s.title for s in hist.list()] == ["newest", "middle", "oldest"]
    assert [s.id for s in hist.list(limit=2)] == [ids["newest"], ids["middle"]]
    top = hist.list()[0]
    assert top.created == T0 + timedelta(minutes=10)
    assert top.status == "recording"


def test_list_same_created_time_orders_by_id(hist: History) -> None:
    first = hist.start_dictation("first", created=T0)
    second = hist.start_dictation("second", created=T0)
    assert [s.id for s in hist.list()] == [second, first]


def test_list_preview(hist: History) -> None:
    short = hist.start_dictation("short", created=T0)
    add_text(hist, short, ["  Hello   there. ", "", "General Kenobi."])
    long = hist.start_dictation("long", created=T0 + timedelta(seconds=1))
    words = [f"word{i:03d}" for i in range(100)]
    hist.add_segment(long, 1, 5.0, 9.0, " ".join(words[20:]))
    hist.add_segment(long, 0, 0.0, 5.0, " ".join(words[:20]))
    empty = hist.start_dictation("empty", created=T0 + timedelta(seconds=2))
    hist.finish(long, 9.0)

    by_id = {s.id: s for s in hist.list()}
    assert by_id[short].preview == "Hello there. General Kenobi."
    assert by_id[empty].preview == ""
    preview = by_id[long].preview
    assert preview.startswith("word000 word001")
    assert preview.endswith("…")
    assert 100 <= len(preview) <= 121
    assert " ".join(words).startswith(preview[:-1])  # cut at a word boundary, in segment order
    assert by_id[long].duration == 9.0


def test_unfinished(hist: History) -> None:
    done = hist.start_dictation("done", created=T0)
    hist.finish(done, 1.0)
    older = hist.start_dictation("crashed early", created=T0 + timedelta(minutes=1))
    newer = hist.start_dictation("crashed late", created=T0 + timedelta(minutes=2))
    recovered = hist.start_dictation("recovered", created=T0 + timedelta(minutes=3))
    hist.finish(recovered, 2.0, status="recovered")
    assert [s.id for s in hist.unfinished()] == [newer, older]
    hist.finish(newer, 5.0, status="recovered")
    assert [s.id for s in hist.unfinished()] == [older]


# -- search --------------------------------------------------------------------------------


@pytest.fixture
def corpus(hist: History) -> dict[str, int]:
    ids = {}
    ids["budget"] = hist.start_dictation("Budget meeting", created=T0)
    add_text(hist, ids["budget"], ["We reviewed the quarterly numbers.", "Marketing wants more."])
    ids["novel"] = hist.start_dictation("Chapter one", created=T0 + timedelta(hours=1))
    add_text(hist, ids["novel"], ["He was an ill-disposed man.", "The café in Zürich was near."])
    ids["notes"] = hist.start_dictation("Groceries", created=T0 + timedelta(hours=2))
    add_text(hist, ids["notes"], ["foo and bar (bar) AND baz", "日本語のテスト"])
    return ids


def ids_of(summaries) -> list[int]:
    return [s.id for s in summaries]


def test_search_by_segment_word(hist: History, corpus: dict[str, int]) -> None:
    assert ids_of(hist.search("quarterly")) == [corpus["budget"]]
    assert ids_of(hist.search("QUARTERLY numbers")) == [corpus["budget"]]
    assert ids_of(hist.search("quart")) == [corpus["budget"]]  # words match as prefixes
    assert hist.search("quarterly groceries") == []  # every word must be found


def test_search_by_title(hist: History, corpus: dict[str, int]) -> None:
    assert ids_of(hist.search("groceries")) == [corpus["notes"]]
    assert ids_of(hist.search("budget")) == [corpus["budget"]]
    # words may be split between the title and the text
    assert ids_of(hist.search("budget marketing")) == [corpus["budget"]]


def test_search_results_newest_first(hist: History, corpus: dict[str, int]) -> None:
    hist.add_segment(corpus["budget"], 5, 10, 11, "Chapter one is late.")
    assert ids_of(hist.search("chapter")) == [corpus["novel"], corpus["budget"]]
    assert ids_of(hist.search("chapter", limit=1)) == [corpus["novel"]]


def test_search_punctuated_and_unicode_words(hist: History, corpus: dict[str, int]) -> None:
    assert ids_of(hist.search("ill-disposed")) == [corpus["novel"]]
    assert ids_of(hist.search("ZÜRICH")) == [corpus["novel"]]
    assert ids_of(hist.search("cafe")) == [corpus["novel"]]  # diacritics folded
    assert ids_of(hist.search("日本語")) == [corpus["notes"]]
    assert ids_of(hist.search("foo AND")) == [corpus["notes"]]  # AND is just a word
    assert ids_of(hist.search("(bar")) == [corpus["notes"]]
    assert ids_of(hist.search("NEAR(")) == [corpus["novel"]]  # the word "near"


NASTY = [
    "'\"",
    '"',
    '"unbalanced',
    '""',
    "foo AND",
    "AND",
    "OR NOT",
    "(bar",
    "bar)",
    "*",
    "foo*",
    "NEAR(",
    "NEAR(foo bar, 2)",
    "ill-disposed",
    "-foo",
    "text:foo",
    "title : x",
    "^foo",
    "foo + bar",
    "{text title}: foo",
    "Zürich 日本語 🙂",
    "\\",
    "%_",
    "'; DROP TABLE dictations; --",
    "a" * 500,
    " ".join(["x"] * 100),
    "\x00",
    "",
    "   \t\n",
]


@pytest.mark.parametrize("query", NASTY)
def test_search_never_raises(hist: History, corpus: dict[str, int], query: str) -> None:
    result = hist.search(query)
    assert isinstance(result, list)
    assert hist.db.table("dictations").count == 3  # and nothing was harmed


@pytest.mark.parametrize("query", ["", "   ", "*", '"', "'\"", "()", "- + ^"])
def test_search_without_words_returns_empty_list(hist: History, corpus, query: str) -> None:
    assert hist.search(query) == []


def test_fts_phrases_quote_every_word() -> None:
    assert fts_phrases('say "hi" NEAR( * -x') == ['"say"*', '"""hi"""*', '"NEAR("*', '"-x"*']
    assert fts_phrases("") == []


# -- rename and delete ---------------------------------------------------------------------


def test_rename(hist: History, corpus: dict[str, int]) -> None:
    hist.rename(corpus["notes"], "  Shopping list ")
    assert hist.get(corpus["notes"]).title == "Shopping list"
    assert ids_of(hist.search("shopping")) == [corpus["notes"]]
    assert hist.search("groceries") == []
    assert_fts_consistent(hist)
    with pytest.raises(ValueError):
        hist.rename(corpus["notes"], "   ")
    with pytest.raises(DictationNotFound):
        hist.rename(999, "x")


def test_delete(hist: History, corpus: dict[str, int]) -> None:
    did = corpus["novel"]
    assert hist.delete(did) is True
    with pytest.raises(DictationNotFound):
        hist.get(did)
    assert hist.delete(did) is False
    assert hist.delete(12345) is False
    assert hist.search("ill-disposed") == []
    assert hist.search("chapter") == []
    assert fts_rows(hist, "segments", '"zürich"') == []
    assert fts_rows(hist, "dictations", '"chapter"') == []
    assert hist.db.table("segments").count_where("dictation_id = ?", [did]) == 0
    assert_fts_consistent(hist)
    assert sorted(ids_of(hist.list())) == sorted([corpus["budget"], corpus["notes"]])
    assert ids_of(hist.search("quarterly")) == [corpus["budget"]]


# -- export --------------------------------------------------------------------------------


@pytest.fixture
def spoken(hist: History) -> int:
    did = hist.start_dictation("Letter to Bob", created=T0)
    hist.add_segment(did, 1, 2.5, 4.25, "How are you?")
    hist.add_segment(did, 0, 0.0, 2.5, "Dear Bob,")
    hist.add_segment(did, 2, 4.25, 4.5, "")  # an empty final: dropped by every format
    hist.add_segment(did, 3, 61.0, 3725.125, "Best, Alice")
    hist.finish(did, 3726.0)
    return did


def test_transcript(hist: History, spoken: int) -> None:
    t = hist.transcript(spoken)
    assert isinstance(t, Transcript)
    assert t.source == "Letter to Bob"
    assert t.duration == 3726.0
    assert [(s.start, s.end) for s in t.segments][:2] == [(0.0, 2.5), (2.5, 4.25)]
    assert t.text == "Dear Bob, How are you? Best, Alice"


def test_export_txt(hist: History, spoken: int) -> None:
    assert hist.export(spoken, "txt") == "Dear Bob, How are you? Best, Alice\n"


def test_export_srt_parses(hist: History, spoken: int) -> None:
    subs = list(srt.parse(hist.export(spoken, "srt")))
    assert [s.content for s in subs] == ["Dear Bob,", "How are you?", "Best, Alice"]
    assert [s.index for s in subs] == [1, 2, 3]
    assert subs[1].start == timedelta(seconds=2.5)
    assert subs[2].end == timedelta(hours=1, minutes=2, seconds=5.125)


def test_export_vtt_parses(hist: History, spoken: int) -> None:
    vtt = webvtt.from_buffer(io.StringIO(hist.export(spoken, "vtt")), strict=True)
    assert [c.text for c in vtt.captions] == ["Dear Bob,", "How are you?", "Best, Alice"]
    assert vtt.captions[1].start == "00:00:02.500"
    assert vtt.captions[2].end == "01:02:05.125"


def test_export_json_shape(hist: History, spoken: int) -> None:
    doc = json.loads(hist.export(spoken, "json"))
    assert doc == [
        {
            "file": "Letter to Bob",
            "text": "Dear Bob, How are you? Best, Alice",
            "segments": [
                {"start": 0.0, "end": 2.5, "text": "Dear Bob,"},
                {"start": 2.5, "end": 4.25, "text": "How are you?"},
                {"start": 61.0, "end": 3725.125, "text": "Best, Alice"},
            ],
        }
    ]


def test_export_errors(hist: History, spoken: int) -> None:
    with pytest.raises(ValueError, match="unknown export format"):
        hist.export(spoken, "docx")
    with pytest.raises(DictationNotFound):
        hist.export(spoken + 1, "txt")


def test_export_of_empty_dictation(hist: History) -> None:
    did = hist.start_dictation("nothing said")
    assert hist.export(did, "txt") == "\n"
    assert list(srt.parse(hist.export(did, "srt"))) == []
    assert json.loads(hist.export(did, "json"))[0]["segments"] == []


# -- the database itself -------------------------------------------------------------------


def test_wal_mode_and_foreign_keys_are_on(hist: History, db_path: Path) -> None:
    assert hist.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert hist.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    # WAL is a property of the file: a plain connection sees it too
    raw = sqlite3.connect(db_path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_schema(hist: History) -> None:
    dictations = hist.db.table("dictations")
    segments = hist.db.table("segments")
    assert dictations.pks == ["id"]
    assert {c.name: c.type for c in segments.columns} == {
        "id": "INTEGER",
        "dictation_id": "INTEGER",
        "segment": "INTEGER",
        "start": "REAL",
        "end": "REAL",
        "text": "TEXT",
    }
    fk = segments.foreign_keys[0]
    assert (fk.column, fk.other_table, fk.other_column, fk.on_delete) == (
        "dictation_id",
        "dictations",
        "id",
        "CASCADE",
    )
    assert any(i.unique and i.columns == ["dictation_id", "segment"] for i in segments.indexes)
    assert segments.detect_fts() == "segments_fts"
    assert dictations.detect_fts() == "dictations_fts"


def test_writer_and_reader_on_the_same_file(db_path: Path) -> None:
    with History(db_path) as writer, History(db_path) as reader:
        did = writer.start_dictation("shared")
        writer.add_segment(did, 0, 0.0, 1.0, "visible")
        assert reader.get(did).text == "visible"
        # while the writer holds an open write transaction the reader is not blocked
        # and sees the last committed state
        with writer.db.atomic():
            writer.add_segment(did, 1, 1.0, 2.0, "pending")
            assert reader.get(did).text == "visible"
        assert reader.get(did).text == "visible pending"
        assert ids_of(reader.search("pending")) == [did]
        # and the other way round
        reader.rename(did, "renamed by reader")
        assert writer.get(did).title == "renamed by reader"
        assert writer.delete(did)
        with pytest.raises(DictationNotFound):
            reader.get(did)


def test_reopen_keeps_data_and_schema(db_path: Path) -> None:
    with History(db_path) as h:
        did = h.start_dictation("kept")
        h.add_segment(did, 0, 0.0, 1.0, "persistent words")
    with History(db_path) as h:
        assert h.get(did).text == "persistent words"
        assert ids_of(h.search("persistent")) == [did]
        assert h.db.execute("PRAGMA user_version").fetchone()[0] == history_mod.SCHEMA_VERSION
        assert_fts_consistent(h)


def test_a_history_belongs_to_one_thread(hist: History) -> None:
    errors: list[BaseException] = []

    def use_from_other_thread() -> None:
        try:
            hist.list()
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=use_from_other_thread)
    worker.start()
    worker.join()
    assert len(errors) == 1
    assert isinstance(errors[0], sqlite3.ProgrammingError)


def test_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_user_data_dir(appname: str, appauthor: object = None) -> str:
        calls.append((appname, appauthor))
        return str(tmp_path / "data" / appname)

    monkeypatch.setattr(history_mod.platformdirs, "user_data_dir", fake_user_data_dir)
    with History() as h:
        assert h.path == tmp_path / "data" / "earshot" / "history.db"
        h.start_dictation()
    assert calls[0] == ("earshot", False)
    assert (tmp_path / "data" / "earshot" / "history.db").is_file()


# -- audio at rest: file modes, deleting the audio ---------------------------------------------





@posix_only
def test_database_and_side_files_are_owner_only(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "data" / "earshot" / "history.db"
    with History(path) as writer, History(path) as reader:
        did = writer.start_dictation("private")
        writer.add_segment(did, 0, 0.0, 1.0, "words at rest")
        assert reader.get(did).text == "words at rest"
        side = [Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(p.exists() for p in side)  # WAL mode, connections open
        for p in (path, *side):
            assert mode(p) == 0o600, p
    assert mode(path) == 0o600
    for created in (path.parent, path.parent.parent):
        assert mode(created) == 0o700, created


@posix_only
def test_database_file_is_private_before_sqlite_opens_it(
    tmp_path: Path, umask_022, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    real_database = history_mod.Database

    def database(path, *args, **kwargs):  # the real sqlite-utils Database, watched
        seen.append(mode(Path(path)))
        return real_database(path, *args, **kwargs)

    monkeypatch.setattr(history_mod, "Database", database)
    History(tmp_path / "history.db").close()
    assert seen == [0o600]  # never world-readable, not even for a moment


@posix_only
def test_rollback_journal_is_owner_only_too(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "history.db"
    History(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    try:  # a plain connection that leaves WAL mode uses a -journal file
        raw.execute("PRAGMA journal_mode = DELETE")
        raw.execute("PRAGMA journal_mode = PERSIST")  # keep the -journal file after commit
        raw.execute("INSERT INTO dictations (title, created) VALUES ('x', '2026-01-01')")
    finally:
        raw.close()
    assert mode(Path(f"{path}-journal")) == 0o600


@posix_only
def test_an_older_world_readable_history_is_made_private(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "history.db"
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("CREATE TABLE t (x)")  # raw stays open: -wal and -shm stay
    assert mode(path) == mode(Path(f"{path}-wal")) == 0o644
    try:
        with History(path):
            for suffix in ("", "-wal", "-shm"):
                assert mode(Path(f"{path}{suffix}")) == 0o600, suffix
    finally:
        raw.close()


def journaled(journal: Journal, name: str, seconds: float = 0.5) -> Path:
    """A finished journal entry with a recovery copy, as a crashed-then-recovered one has."""
    with journal.open(name) as writer:
        writer.append(np.zeros(int(16000 * seconds), np.float32))
    journal.mark(name, "recording")
    journal.export_recovery(name)
    return writer.entry.pcm_path


def test_delete_removes_the_dictations_audio(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "audio")
    with History(tmp_path / "history.db", journal=journal) as h:
        gone, kept = (journaled(journal, name) for name in ("gone", "kept"))
        did = h.start_dictation("gone", audio_path=gone)
        other = h.start_dictation("kept", audio_path=kept)
        assert h.delete(did) is True
        assert sorted(p.name for p in journal.folder.iterdir()) == [
            "kept.json", "kept.pcm", "kept.wav"
        ]
        assert h.get(other).audio_path == str(kept)
        assert h.delete(did) is False


def test_the_default_journal_is_the_folder_next_to_the_history(db_path: Path) -> None:
    journal = Journal(db_path.parent / "journal")  # where the app and the window tests keep it
    pcm = journaled(journal, "d")
    with History(db_path) as h:
        assert h.journal.folder == journal.folder
        assert h.delete(h.start_dictation(audio_path=pcm))
    assert list(journal.folder.iterdir()) == []


def test_delete_with_audio_already_gone_or_none(hist: History, tmp_path: Path) -> None:
    missing = hist.start_dictation(audio_path=tmp_path / "journal" / "never.pcm")
    silent = hist.start_dictation()
    assert hist.delete(missing) and hist.delete(silent)
    assert hist.list() == []


def test_delete_leaves_a_tampered_audio_path_alone(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    own = journaled(journal, "own")
    outside = tmp_path / "documents"
    outside.mkdir()
    victims = [outside / "own.pcm", outside / "own.json", outside / "own.wav",
               outside / "thesis.txt"]
    for victim in victims:
        victim.write_bytes(b"precious")
    with History(tmp_path / "history.db", journal=journal) as h:
        for path in (outside / "own.pcm", journal.folder / ".." / "documents" / "own.pcm",
                     outside / "thesis.txt"):
            did = h.start_dictation(audio_path=path)
            # or changed behind the app's back, straight in the file
            h.db.execute("UPDATE dictations SET audio_path = ? WHERE id = ?", [str(path), did])
            assert h.delete(did) is True  # the dictation goes ...
        assert all(v.read_bytes() == b"precious" for v in victims)  # ... the files stay
        assert own.exists()


@posix_only
def test_audio_that_cannot_be_deleted_keeps_the_dictation(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal")
    with History(tmp_path / "history.db", journal=journal) as h:
        stuck = journal.folder / "stuck.pcm"
        (stuck / "inside").mkdir(parents=True)  # unlink() fails on a folder, even for root
        did = h.start_dictation("stuck", audio_path=stuck)
        with pytest.raises(OSError):
            h.delete(did)
        assert h.get(did).title == "stuck"  # still listed: the user can try again
        (stuck / "inside").rmdir()
        stuck.rmdir()
        assert h.delete(did)
