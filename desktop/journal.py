"""Crash-safe journal of the raw audio of each dictation, so a crash loses no speech.

Layout, one pair of files per dictation in the journal folder (default
`<user data>/earshot/journal`):
- `<id>.pcm`: raw PCM16 little-endian, 16 kHz mono, no header, appended as audio arrives,
  flushed on every append and fsynced at most once a second. A killed process leaves a file
  that is readable up to its last flush (a torn trailing byte is ignored on read).
- `<id>.json`: sidecar `{"id", "sample_rate": 16000, "created": ISO-8601 UTC, "status"}`,
  always replaced atomically (temp file, fsync, os.replace), so it is old or new, never torn.
  `status` is "recording" while a writer is open; `JournalWriter.close()` sets "done" (or
  what the caller passes), and `Journal.unfinished()` lists the dictations still
  "recording", i.e. those a crash interrupted.

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
            self.journal.mark(self.entry, status)

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
        self.folder.mkdir(parents=True, exist_ok=True)
        fh = pcm_path.open("xb")
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

    def export_wav(self, entry: JournalEntry | str, path: Path | str) -> Path:
        """Write the dictation as a 16 kHz mono PCM16 WAV file (streamed, bounded memory)."""
        src = self._entry(entry).pcm_path
        path = Path(path)
        with src.open("rb") as fh, sf.SoundFile(
            str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16", format="WAV"
        ) as out:
            carry = b""
            while block := fh.read(_EXPORT_BLOCK_BYTES):
                block = carry + block
                even = len(block) - len(block) % 2
                carry = block[even:]
                out.write(np.frombuffer(block[:even], dtype="<i2"))
        return path

    def mark(self, entry_or_id: JournalEntry | str, status: str) -> None:
        """Set the dictation's status (e.g. "done", "recovered"); rebuilds a lost sidecar."""
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

    def discard(self, entry_or_id: JournalEntry | str) -> None:
        """Delete the dictation's audio and sidecar (missing files are fine)."""
        entry = self._entry(entry_or_id)
        entry.pcm_path.unlink(missing_ok=True)
        entry.meta_path.unlink(missing_ok=True)
