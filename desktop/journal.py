"""Crash-safe journal of the raw audio of each dictation, so a crash loses no speech.

Layout, per dictation in the journal folder (default `<user data>/earshot/journal`):
- `<id>.pcm`: raw PCM16 little-endian, 16 kHz mono, no header, appended as audio arrives,
  flushed on every append and fsynced at most once a second. A killed process leaves a file
  that is readable up to its last flush (a torn trailing byte is ignored on read).
- `<id>.json`: sidecar `{"id", "sample_rate": 16000, "created": ISO-8601 UTC, "status"}`,
  always replaced atomically (temp file `.<id>.json.*.tmp`, fsync, os.replace), so it is old
  or new, never torn. `status` is "recording" while a writer is open;
  `JournalWriter.close()` sets "done" (or what the caller passes), and
  `Journal.unfinished()` lists the dictations still "recording", i.e. those a crash
  interrupted -- or whose transcription is incomplete: the app closes a dictation as
  "done" only when every segment got text, and with `close(status="recording")`
  otherwise, so its audio stays offered for recovery (recovery re-transcribes it as a new
  dictation with its own entry and marks the old one "recovered").
- `<id>.wav`: the recovery copy, only while a crashed dictation is re-transcribed
  (`Journal.export_recovery`). It is derived from the `.pcm`, so `mark()` to any status but
  "recording" removes it: the re-transcription it was made for is over.

Audio at rest is private: every file the journal writes (audio, sidecar, its temp file,
recovery copy, `export_wav` output) is created with mode 0600, and every folder it creates
(the journal folder and any missing parent) with mode 0700, without touching the process
umask. Folders and files that already exist keep their mode.

Deleting: `Journal.discard(id)` removes all of a dictation's files (audio, sidecar, recovery
copy, leftover sidecar temp files); missing files are fine. `Journal.delete_audio(path)`
does the same for the entry whose audio is at `path` (the `audio_path` the history stores)
and refuses, deleting nothing, any path that is not `<valid id>.pcm` directly inside this
journal folder: it only ever unlinks names it builds itself inside the folder.

Thread rules: one `JournalWriter` per dictation, used from one thread (typically the capture
worker's). `Journal` keeps no mutable state: its methods may be called from any thread,
and reading a dictation while its writer appends sees a consistent prefix.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import platformdirs
import soundfile as sf

from edge_server.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_float

log = logging.getLogger(__name__)

STATUS_RECORDING = "recording"
STATUS_DONE = "done"
FSYNC_INTERVAL_S = 1.0
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_EXPORT_BLOCK_BYTES = 1 << 20
PRIVATE_FILE_MODE = 0o600  # owner read/write: every file the journal or history creates
PRIVATE_DIR_MODE = 0o700  # owner only: every folder they create
_O_EXTRA = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def default_journal_dir() -> Path:
    """`<user data>/earshot/journal` (platformdirs)."""
    return Path(platformdirs.user_data_dir("earshot", appauthor=False)) / "journal"


@dataclass(frozen=True)
class JournalEntry:
    """One journaled dictation, as its sidecar described it when listed."""

    id: str
    pcm_path: Path
    meta_path: Path
    created: str
    status: str
    sample_rate: int = SAMPLE_RATE


def _check_id(dictation_id: str) -> str:
    if not _ID_RE.fullmatch(dictation_id):
        raise ValueError(
            f"invalid dictation id {dictation_id!r} (letters, digits, '.', '_', '-'; at most 128)"
        )
    return dictation_id


def make_private_dir(folder: Path | str) -> None:
    """Create `folder` and each missing parent with mode 0700; existing folders are untouched.

    (`Path.mkdir(parents=True, mode=...)` would apply the mode to the last folder only.)
    """
    folder = Path(folder)
    if folder.is_dir():
        return
    if folder.parent != folder:
        make_private_dir(folder.parent)
    try:
        folder.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:  # made meanwhile by another thread or process
        if not folder.is_dir():
            raise


def create_private_file(
    path: Path | str, *, exclusive: bool = False, truncate: bool = False
) -> int:
    """Open `path` for writing, creating it with mode 0600; returns the file descriptor.

    `exclusive`: FileExistsError if it exists. Otherwise an existing file is kept (emptied
    when `truncate`) and its mode set to 0600 where the platform allows (POSIX).
    """
    flags = os.O_WRONLY | os.O_CREAT | _O_EXTRA
    if exclusive:
        flags |= os.O_EXCL
    elif truncate:
        flags |= os.O_TRUNC
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    if not exclusive and hasattr(os, "fchmod"):
        try:
            os.fchmod(fd, PRIVATE_FILE_MODE)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _read_json(path: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None (logging a warning) when it is missing or corrupt."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.warning("journal: sidecar %s is missing", path)
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        log.warning("journal: sidecar %s is unreadable (%s)", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("status"), str):
        log.warning("journal: sidecar %s has no status", path)
        return None
    return data


class JournalWriter:
    """Appends one dictation's audio to its `.pcm` file (one thread only; see module doc)."""

    def __init__(self, journal: Journal, entry: JournalEntry, fh: Any) -> None:
        self.journal = journal
        self.entry = entry
        self.samples_written = 0
        self._fh = fh
        self._last_sync = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._fh is None

    def append(self, samples: np.ndarray) -> None:
        """Write 16 kHz mono float32 samples as PCM16; flush, and fsync at most once a second."""
        if self._fh is None:
            raise ValueError(f"journal writer for {self.entry.id} is closed")
        if samples.ndim != 1:
            raise ValueError(f"journal takes mono audio, got shape {samples.shape}")
        if not len(samples):
            return
        self._fh.write(float_to_pcm16(samples))
        self._fh.flush()
        self.samples_written += len(samples)
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fh.fileno())
            self._last_sync = now

    def close(self, status: str | None = STATUS_DONE) -> None:
        """fsync and close the audio, then record `status` (None: leave it "recording").

        Idempotent: a second call does nothing.
        """
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            fh.flush()
            os.fsync(fh.fileno())
        finally:
            fh.close()
        if status is not None:
            try:
                self.journal.mark(self.entry, status)
            except FileNotFoundError:  # deleted (History.delete) while it was recording
                log.info("journal: dictation %s was deleted while recording", self.entry.id)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # On an exception, keep "recording" so that unfinished() offers the audio back.
        self.close(STATUS_DONE if exc_type is None else None)


class Journal:
    """The journal folder: opens writers, lists, reads, exports and removes dictations."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_journal_dir()

    def _paths(self, dictation_id: str) -> tuple[Path, Path]:
        _check_id(dictation_id)
        return self.folder / f"{dictation_id}.pcm", self.folder / f"{dictation_id}.json"

    def open(self, dictation_id: str) -> JournalWriter:
        """Start journaling a new dictation (FileExistsError if the id is already there)."""
        pcm_path, meta_path = self._paths(dictation_id)
        make_private_dir(self.folder)
        fh = os.fdopen(create_private_file(pcm_path, exclusive=True), "wb")
        try:
            created = datetime.now(UTC).isoformat(timespec="milliseconds")
            meta = {
                "id": dictation_id,
                "sample_rate": SAMPLE_RATE,
                "created": created,
                "status": STATUS_RECORDING,
            }
            _write_json_atomic(meta_path, meta)
        except BaseException:
            fh.close()
            pcm_path.unlink(missing_ok=True)
            raise
        entry = JournalEntry(dictation_id, pcm_path, meta_path, created, STATUS_RECORDING)
        return JournalWriter(self, entry, fh)

    def entries(self) -> list[JournalEntry]:
        """Every dictation with a readable sidecar, oldest first (others skipped, logged)."""
        if not self.folder.is_dir():
            return []
        found = []
        for pcm_path in self.folder.glob("*.pcm"):
            dictation_id = pcm_path.stem
            if not _ID_RE.fullmatch(dictation_id):
                continue
            meta_path = pcm_path.with_suffix(".json")
            meta = _read_json(meta_path)
            if meta is None:
                continue
            try:
                rate = int(meta.get("sample_rate", SAMPLE_RATE))
            except (TypeError, ValueError):
                log.warning("journal: sidecar %s has a bad sample_rate", meta_path)
                continue
            created = str(meta.get("created", ""))
            found.append(
                JournalEntry(dictation_id, pcm_path, meta_path, created, meta["status"], rate)
            )
        return sorted(found, key=lambda e: (e.created, e.id))

    def unfinished(self) -> list[JournalEntry]:
        """Dictations still marked "recording": a crash (or kill) interrupted them."""
        return [e for e in self.entries() if e.status == STATUS_RECORDING]

    def _entry(self, entry_or_id: JournalEntry | str) -> JournalEntry:
        if isinstance(entry_or_id, JournalEntry):
            return entry_or_id
        pcm_path, meta_path = self._paths(entry_or_id)
        return JournalEntry(entry_or_id, pcm_path, meta_path, created="", status="")

    def read(self, entry: JournalEntry | str) -> np.ndarray:
        """The dictation's audio as 16 kHz mono float32 (a torn trailing byte is ignored)."""
        data = self._entry(entry).pcm_path.read_bytes()
        return pcm16_to_float(data[: len(data) - len(data) % 2])

    def duration(self, entry: JournalEntry | str) -> float:
        """Seconds of audio on disk."""
        return self._entry(entry).pcm_path.stat().st_size // 2 / SAMPLE_RATE

    def recovery_path(self, entry_or_id: JournalEntry | str) -> Path:
        """Where `export_recovery` puts the dictation's WAV: `<journal folder>/<id>.wav`."""
        dictation_id = entry_or_id.id if isinstance(entry_or_id, JournalEntry) else entry_or_id
        return self.folder / f"{_check_id(dictation_id)}.wav"

    def export_recovery(self, entry: JournalEntry | str) -> Path:
        """Export the dictation as its recovery copy (`recovery_path`) for re-transcription.

        The copy sits next to the entry, so `discard`/`delete_audio` remove it with the entry;
        `mark()` to a status other than "recording" removes it once re-transcription is over.
        """
        return self.export_wav(entry, self.recovery_path(entry))

    def export_wav(self, entry: JournalEntry | str, path: Path | str) -> Path:
        """Write the dictation as a 16 kHz mono PCM16 WAV file, mode 0600 (streamed, bounded
        memory)."""
        src = self._entry(entry).pcm_path
        path = Path(path)
        with src.open("rb") as fh:  # FileNotFoundError before anything is created
            os.close(create_private_file(path, truncate=True))  # sf keeps the mode
            with sf.SoundFile(
                str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16",
                format="WAV",
            ) as out:
                carry = b""
                while block := fh.read(_EXPORT_BLOCK_BYTES):
                    block = carry + block
                    even = len(block) - len(block) % 2
                    carry = block[even:]
                    out.write(np.frombuffer(block[:even], dtype="<i2"))
        return path

    def mark(self, entry_or_id: JournalEntry | str, status: str) -> None:
        """Set the dictation's status (e.g. "done", "recovered"); rebuilds a lost sidecar.

        Any status but "recording" also removes the recovery copy, if there is one.
        """
        if not status:
            raise ValueError("status must be a non-empty string")
        entry = self._entry(entry_or_id)
        if not entry.pcm_path.exists():
            raise FileNotFoundError(f"no journaled audio for dictation {entry.id!r}")
        meta = _read_json(entry.meta_path) if entry.meta_path.exists() else None
        if meta is None:
            mtime = entry.pcm_path.stat().st_mtime
            meta = {
                "id": entry.id,
                "sample_rate": SAMPLE_RATE,
                "created": datetime.fromtimestamp(mtime, UTC).isoformat(timespec="milliseconds"),
            }
        meta["status"] = status
        _write_json_atomic(entry.meta_path, meta)
        if status != STATUS_RECORDING:
            try:
                self.recovery_path(entry).unlink(missing_ok=True)
            except OSError as exc:  # e.g. still open elsewhere on Windows: delete removes it
                log.warning("journal: cannot remove the recovery copy of %s (%s)", entry.id, exc)

    def discard(self, entry_or_id: JournalEntry | str) -> None:
        """Delete all of the dictation's files: audio, sidecar, recovery copy and leftover
        sidecar temp files (missing files are fine; other OSErrors are raised)."""
        dictation_id = entry_or_id.id if isinstance(entry_or_id, JournalEntry) else entry_or_id
        pcm_path, meta_path = self._paths(dictation_id)  # always inside this folder
        pcm_path.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        self.recovery_path(dictation_id).unlink(missing_ok=True)
        if self.folder.is_dir():  # an id holds no glob character (_ID_RE)
            for tmp in self.folder.glob(f".{dictation_id}.json.*.tmp"):
                tmp.unlink(missing_ok=True)

    def delete_audio(self, audio_path: str | os.PathLike[str]) -> bool:
        """Delete the journal entry whose audio is at `audio_path` (see `discard`).

        Returns False, deleting nothing, when `audio_path` is not `<id>.pcm` (a valid id)
        directly inside this journal's folder, e.g. a tampered or foreign history row. The
        files deleted are always named from the id inside the folder, never from the path.
        """
        path = Path(audio_path)
        dictation_id = path.stem
        if (
            path.suffix != ".pcm"
            or not _ID_RE.fullmatch(dictation_id)
            or not _same_folder(path.parent, self.folder)
        ):
            log.warning("journal: not deleting %s: it is not audio of the journal in %s",
                        path, self.folder)
            return False
        self.discard(dictation_id)
        return True
