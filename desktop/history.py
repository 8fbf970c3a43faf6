"""Dictation history: every dictation and its final segments, in one SQLite file.

Contract:
- Location: `<user data>/earshot/history.db` (`platformdirs`), or the path given to `History`.
- A dictation is a row in `dictations` (id, title, created: ISO-8601 UTC, duration: seconds,
  server: "local" or the host that transcribed it, audio_path: the journaled raw audio or NULL,
  status: "recording" | "done" | "recovered") and its finals are rows in `segments`
  (dictation_id, segment number, start/end seconds, text). `(dictation_id, segment)` is unique:
  `add_segment` upserts, so a re-delivered final replaces the stored one instead of duplicating.
- Deleting a dictation deletes its segments (ON DELETE CASCADE, foreign keys on) and its audio:
  the journal entry at `audio_path` (raw PCM, sidecar, recovery copy; `Journal.delete_audio`)
  of the `Journal` given to `History`, by default the `journal` folder next to the history
  file (for the default location: the app's journal). The audio goes first, so a failure
  to delete it (OSError) leaves the dictation listed to retry. An `audio_path` that is not an
  entry of that journal folder (tampered or foreign) is left alone, and a missing file is
  fine. FTS5 indexes over `segments.text` and `dictations.title` are kept current by
  triggers.
- Privacy at rest: the database file is created with mode 0600 before SQLite opens it, and
  any missing folder above it with mode 0700. On every open, the database and its side files
  (`-wal`, `-shm`, `-journal`, where present) are set to 0600; SQLite itself creates those
  side files with the database file's mode (unix VFS), so new ones are 0600 too.
- `search()` takes raw user input: each whitespace-separated word is quoted as an FTS5 string
  (so `"`, `-`, `(`, `*`, AND/OR/NOT/NEAR are plain text) and matched as a word prefix. A
  dictation matches when every word is found in its title or in any of its segments.
- Every method commits before it returns. Exports go through `edge_server.formats.render`.
- An unknown id raises `DictationNotFound` (a `KeyError`).

Thread rule: one `History` per thread. Its SQLite connection refuses use from any other thread,
so the recording thread and the UI thread each open their own on the same file. The database
runs in WAL mode: readers see every committed write and are never blocked by the writer; a
second writer waits for the lock (up to sqlite3's default 5 s busy timeout).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from sqlite_utils import Database
from sqlite_utils.db import ForeignKey, NotFoundError

from desktop.journal import (
    PRIVATE_FILE_MODE,
    Journal,
    create_private_file,
    make_private_dir,
)
from edge_server.formats import FORMATS, TimedText, Transcript, render

SCHEMA_VERSION = 1
STATUSES = ("recording", "done", "recovered")
PREVIEW_CHARS = 120
MAX_SEARCH_WORDS = 16  # words beyond this are ignored: each one adds two FTS lookups
JOURNAL_DIRNAME = "journal"  # the default journal folder, next to the history file
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's files next to the database

FinishStatus = Literal["done", "recovered"]

log = logging.getLogger(__name__)


class DictationNotFound(KeyError):
    """No dictation with this id is in the history."""

    def __init__(self, dictation_id: int) -> None:
        super().__init__(dictation_id)
        self.dictation_id = dictation_id

    def __str__(self) -> str:  # KeyError's own __str__ would print only the repr of the id
        return f"no dictation with id {self.dictation_id} in the history"


@dataclass(frozen=True)
class SegmentRecord:
    """One final segment of a dictation."""

    segment: int  # segment number within the dictation
    start: float
    end: float
    text: str


@dataclass(frozen=True)
class DictationSummary:
    """One row of a history list: enough to show it without loading its segments."""

    id: int
    title: str
    created: datetime  # timezone-aware, UTC
    duration: float
    status: str
    preview: str  # the start of the text, at most about PREVIEW_CHARS characters


@dataclass(frozen=True)
class DictationRecord:
    """A whole dictation with its segments in segment order."""

    id: int
    title: str
    created: datetime  # timezone-aware, UTC
    duration: float
    server: str
    audio_path: str | None
    status: str
    segments: tuple[SegmentRecord, ...]

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text).strip()


def default_path() -> Path:
    """Where the history lives unless a path is given: the user data folder."""
    return Path(platformdirs.user_data_dir("earshot", appauthor=False)) / "history.db"


def _now_iso(when: datetime | None = None) -> str:
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")


def _default_title(created_iso: str) -> str:
    local = datetime.fromisoformat(created_iso).astimezone()
    return f"Dictation {local:%Y-%m-%d %H:%M}"


def _preview(text: str | None, width: int = PREVIEW_CHARS) -> str:
    """`text` with whitespace collapsed, cut at a word boundary to about `width` characters."""
    flat = " ".join((text or "").split())
    if len(flat) <= width:
        return flat
    cut = flat[:width]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip() + "…"


def fts_phrases(query: str) -> builtins.list[str]:
    """FTS5 prefix phrases, one per word of `query`, safe to pass to MATCH whatever it holds.

    A word is wrapped in double quotes (inner quotes doubled), which makes operators, brackets,
    `*`, `-` and `:` plain text; words without a letter or digit are dropped, since the
    tokenizer would find nothing in them.
    """
    words = [w for w in query.split() if any(c.isalnum() for c in w)]
    return ['"' + w.replace('"', '""') + '"*' for w in words[:MAX_SEARCH_WORDS]]


class History:
    """The dictation history in one SQLite file. See the module docstring for the thread rule."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, journal: Journal | None = None
    ) -> None:
        """`journal`: where the dictations' audio lives, for `delete`; by default the
        `journal` folder next to the history file (see the module docstring)."""
        self.path = Path(path) if path is not None else default_path()
        if journal is None:
            journal = Journal(self.path.parent / JOURNAL_DIRNAME)
        self.journal = journal
        make_private_dir(self.path.parent)
        # An empty file is an empty database; SQLite keeps its mode and gives it to side files.
        with contextlib.suppress(FileExistsError):
            os.close(create_private_file(self.path, exclusive=True))
        self.db = Database(self.path)
        self.db.enable_wal()
        # A per-connection setting with no sqlite-utils API: needed for ON DELETE CASCADE.
        self.db.execute("PRAGMA foreign_keys = ON")
        self._create_schema()
        self._make_private()

    def _make_private(self) -> None:
        """Set the database and its side files that exist now to 0600 (older files too)."""
        for path in (self.path, *(Path(f"{self.path}{s}") for s in SIDE_SUFFIXES)):
            try:
                if path.stat().st_mode & 0o777 != PRIVATE_FILE_MODE:
                    os.chmod(path, PRIVATE_FILE_MODE)
            except FileNotFoundError:
                continue
            except OSError as exc:  # e.g. another user's file: usable, but say so
                log.warning("history: cannot make %s private (%s)", path, exc)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_schema(self) -> None:
        """Create whatever is missing; safe to run on an existing history."""
        dictations = self.db.table("dictations").create(
            {
                "id": int,
                "title": str,
                "created": str,
                "duration": float,
                "server": str,
                "audio_path": str,
                "status": str,
            },
            pk="id",
            not_null={"title", "created", "duration", "server", "status"},
            defaults={"duration": 0.0, "server": "local", "status": "recording"},
            if_not_exists=True,
            strict=True,
        )
        dictations.create_index(["created"], if_not_exists=True)
        segments = self.db.table("segments").create(
            {
                "id": int,
                "dictation_id": int,
                "segment": int,
                "start": float,
                "end": float,
                "text": str,
            },
            pk="id",
            foreign_keys=[
                ForeignKey("segments", "dictation_id", "dictations", "id", on_delete="CASCADE")
            ],
            not_null={"dictation_id", "segment", "start", "end", "text"},
            if_not_exists=True,
            strict=True,
        )
        segments.create_index(
            ["dictation_id", "segment"],
            index_name="segments_dictation_segment",
            unique=True,
            if_not_exists=True,
        )
        if not segments.detect_fts():
            segments.enable_fts(["text"], fts_version="FTS5", create_triggers=True)
        if not dictations.detect_fts():
            dictations.enable_fts(["title"], fts_version="FTS5", create_triggers=True)
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- writing -----------------------------------------------------------------------------

    def start_dictation(
        self,
        title: str | None = None,
        server: str = "local",
        audio_path: str | os.PathLike[str] | None = None,
        *,
        created: datetime | None = None,
    ) -> int:
        """Record a new dictation with status "recording"; returns its id.

        `title` defaults to "Dictation YYYY-MM-DD HH:MM" (local time); `created` to now.
        """
        created_iso = _now_iso(created)
        title = (title or "").strip() or _default_title(created_iso)
        table = self.db.table("dictations").insert(
            {
                "title": title,
                "created": created_iso,
                "duration": 0.0,
                "server": server,
                "audio_path": os.fspath(audio_path) if audio_path is not None else None,
                "status": "recording",
            }
        )
        assert table.last_pk is not None
        return int(table.last_pk)

    def add_segment(
        self, dictation_id: int, segment: int, start: float, end: float, text: str
    ) -> None:
        """Store final segment number `segment`, replacing one already stored under that number."""
        record = {
            "dictation_id": dictation_id,
            "segment": segment,
            "start": float(start),
            "end": float(end),
            "text": text,
        }
        try:
            self.db.table("segments").upsert(record, pk=("dictation_id", "segment"))
        except sqlite3.IntegrityError as e:
            if "FOREIGN KEY" in str(e):
                raise DictationNotFound(dictation_id) from None
            raise

    def finish(self, dictation_id: int, duration: float, status: FinishStatus = "done") -> None:
        """Mark a dictation finished ("done") or rebuilt after a crash ("recovered")."""
        if status not in ("done", "recovered"):
            raise ValueError(f"finish status must be 'done' or 'recovered', not {status!r}")
        if not duration >= 0:
            raise ValueError(f"duration must be a number of seconds >= 0, not {duration!r}")
        self._update(dictation_id, {"duration": float(duration), "status": status})

    def rename(self, dictation_id: int, title: str) -> None:
        title = title.strip()
        if not title:
            raise ValueError("a dictation's title cannot be empty")
        self._update(dictation_id, {"title": title})

    def delete(self, dictation_id: int) -> bool:
        """Delete a dictation, its segments and its journaled audio (see the module docstring);
        False if there was no such dictation. OSError if its audio cannot be deleted (the
        dictation is then kept)."""
        row = self.db.execute(
            "SELECT audio_path FROM dictations WHERE id = ?", [dictation_id]
        ).fetchone()
        if row is None:
            return False
        if row[0]:
            self.journal.delete_audio(row[0])
        cursor = self.db.execute("DELETE FROM dictations WHERE id = ?", [dictation_id])
        return cursor.rowcount > 0

    def _update(self, dictation_id: int, values: dict[str, Any]) -> None:
        try:
            self.db.table("dictations").update(dictation_id, values)
        except NotFoundError:
            raise DictationNotFound(dictation_id) from None

    def _require(self, dictation_id: int) -> dict[str, Any]:
        try:
            return self.db.table("dictations").get(dictation_id)
        except NotFoundError:
            raise DictationNotFound(dictation_id) from None

    # -- reading -----------------------------------------------------------------------------

    def get(self, dictation_id: int) -> DictationRecord:
        row = self._require(dictation_id)
        rows = self.db.table("segments").rows_where(
            "dictation_id = ?", [dictation_id], order_by="segment"
        )
        return DictationRecord(
            id=row["id"],
            title=row["title"],
            created=datetime.fromisoformat(row["created"]),
            duration=row["duration"],
            server=row["server"],
            audio_path=row["audio_path"],
            status=row["status"],
            segments=tuple(
                SegmentRecord(r["segment"], r["start"], r["end"], r["text"]) for r in rows
            ),
        )

    def list(self, limit: int = 100) -> builtins.list[DictationSummary]:
        """The newest `limit` dictations, newest first."""
        return self._summaries("1", [], limit)

    def unfinished(self) -> builtins.list[DictationSummary]:
        """Dictations still marked "recording": the app stopped before finishing them."""
        return self._summaries("d.status = 'recording'", [], None)

    def search(self, query: str, limit: int = 100) -> builtins.list[DictationSummary]:
        """Dictations whose title or text holds every word of `query` (as prefixes), newest
        first. Any string is accepted; one with no letters or digits finds nothing."""
        phrases = fts_phrases(query)
        if not phrases:
            return []
        hits = (
            "d.id IN (SELECT dictation_id FROM segments WHERE id IN "
            "(SELECT rowid FROM segments_fts WHERE segments_fts MATCH ?) "
            "UNION SELECT rowid FROM dictations_fts WHERE dictations_fts MATCH ?)"
        )
        where = " AND ".join([hits] * len(phrases))
        params = [p for phrase in phrases for p in (phrase, phrase)]
        return self._summaries(where, params, limit)

    def _summaries(
        self, where: str, params: builtins.list[Any], limit: int | None
    ) -> builtins.list[DictationSummary]:
        # The preview needs only the first segments; 64 of them hold far more than 120 chars.
        sql = (
            "SELECT d.id, d.title, d.created, d.duration, d.status, "
            "(SELECT group_concat(text, ' ') FROM (SELECT text FROM segments s "
            "WHERE s.dictation_id = d.id AND s.text != '' ORDER BY s.segment LIMIT 64)) "
            "AS preview "
            f"FROM dictations d WHERE {where} ORDER BY d.created DESC, d.id DESC LIMIT ?"
        )
        rows = self.db.query(sql, [*params, -1 if limit is None else limit])
        return [
            DictationSummary(
                id=r["id"],
                title=r["title"],
                created=datetime.fromisoformat(r["created"]),
                duration=r["duration"],
                status=r["status"],
                preview=_preview(r["preview"]),
            )
            for r in rows
        ]

    # -- export ------------------------------------------------------------------------------

    def transcript(self, dictation_id: int) -> Transcript:
        """The dictation as an `edge_server.formats.Transcript` (source: its title)."""
        record = self.get(dictation_id)
        return Transcript(
            source=record.title,
            segments=[TimedText(s.start, s.end, s.text) for s in record.segments],
            duration=record.duration,
        )

    def export(self, dictation_id: int, fmt: str) -> str:
        """The dictation as a txt, srt, vtt or json document (edge_server.formats.render)."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
        return render([self.transcript(dictation_id)], fmt)
