"""The dictation journal on a real folder with real speech: writing, crash recovery,
tolerance of damaged files, export and removal."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import platformdirs
import pytest
import soundfile as sf

from desktop.journal import Journal, JournalEntry, default_journal_dir
from edge_server.audio import SAMPLE_RATE, float_to_pcm16, pcm16_to_float, read_audio
from tests.conftest import DEV

SPEECH = read_audio(DEV / "sherpa-test-wavs" / "0.wav")


def round_trip(samples: np.ndarray) -> np.ndarray:
    return pcm16_to_float(float_to_pcm16(samples))


def write_chunks(writer, samples: np.ndarray, size: int = 1600) -> None:
    for i in range(0, len(samples), size):
        writer.append(samples[i : i + size])


def sidecar(journal: Journal, dictation_id: str) -> dict:
    return json.loads((journal.folder / f"{dictation_id}.json").read_text(encoding="utf-8"))


def test_default_folder_is_under_user_data():
    expected = Path(platformdirs.user_data_dir("earshot", appauthor=False)) / "journal"
    assert Journal().folder == default_journal_dir() == expected


def test_write_in_chunks_and_read_back(tmp_path):
    journal = Journal(tmp_path / "journal")
    writer = journal.open("d-001")
    assert sidecar(journal, "d-001")["status"] == "recording"
    write_chunks(writer, SPEECH, size=1234)
    writer.append(np.zeros(0, np.float32))
    assert writer.samples_written == len(SPEECH)
    writer.close()
    writer.close()  # idempotent

    pcm = tmp_path / "journal" / "d-001.pcm"
    assert pcm.stat().st_size == 2 * len(SPEECH)
    got = journal.read("d-001")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, round_trip(SPEECH))
    assert journal.duration("d-001") == pytest.approx(len(SPEECH) / SAMPLE_RATE)

    meta = sidecar(journal, "d-001")
    assert meta["id"] == "d-001" and meta["sample_rate"] == 16000 and meta["status"] == "done"
    created = datetime.fromisoformat(meta["created"])
    assert created.utcoffset() == timedelta(0)
    assert not list((tmp_path / "journal").glob("*.tmp"))
    with pytest.raises(ValueError):
        writer.append(SPEECH[:10])


def test_crash_leaves_an_unfinished_recording_that_reads_back(tmp_path):
    writer = Journal(tmp_path).open("crashed")
    write_chunks(writer, SPEECH[: 3 * SAMPLE_RATE])
    # The process "dies" here: no close(). A new app start opens the same folder.
    after_restart = Journal(tmp_path)
    unfinished = after_restart.unfinished()
    assert [e.id for e in unfinished] == ["crashed"]
    entry = unfinished[0]
    assert isinstance(entry, JournalEntry) and entry.status == "recording"
    np.testing.assert_array_equal(after_restart.read(entry), round_trip(SPEECH[: 3 * SAMPLE_RATE]))
    assert after_restart.duration(entry) == pytest.approx(3.0)

    writer.close()
    assert after_restart.unfinished() == []
    assert [e.status for e in after_restart.entries()] == ["done"]


def test_context_manager_keeps_audio_recoverable_on_error(tmp_path):
    journal = Journal(tmp_path)
    with journal.open("ok") as writer:
        writer.append(SPEECH[:1600])
    with pytest.raises(RuntimeError), journal.open("failed") as writer:
        writer.append(SPEECH[:1600])
        raise RuntimeError("engine crashed")
    assert [e.id for e in journal.unfinished()] == ["failed"]


def test_mark_and_unfinished_order(tmp_path):
    journal = Journal(tmp_path)
    first = journal.open("a")
    second = journal.open("b")
    first.append(SPEECH[:100])
    second.append(SPEECH[:100])
    assert [e.id for e in journal.unfinished()] == ["a", "b"]
    journal.mark(journal.unfinished()[0], "recovered")
    assert [e.id for e in journal.unfinished()] == ["b"]
    journal.mark("b", "done")
    assert journal.unfinished() == []
    assert sidecar(journal, "a")["status"] == "recovered"
    with pytest.raises(FileNotFoundError):
        journal.mark("nope", "done")


def test_truncated_odd_length_pcm_reads_fine(tmp_path):
    journal = Journal(tmp_path)
    writer = journal.open("torn")
    writer.append(SPEECH[:16000])
    with (tmp_path / "torn.pcm").open("ab") as fh:
        fh.write(b"\x7f")  # half a sample: the process died mid-write
    got = journal.read("torn")
    np.testing.assert_array_equal(got, round_trip(SPEECH[:16000]))
    assert journal.duration("torn") == pytest.approx(1.0)
    out = journal.export_wav("torn", tmp_path / "torn.wav")
    assert sf.info(str(out)).frames == 16000
    writer.close()


def test_corrupt_or_missing_sidecars_are_skipped_with_a_warning(tmp_path, caplog):
    journal = Journal(tmp_path)
    for name in ("good", "corrupt", "no-sidecar", "no-status"):
        journal.open(name).append(SPEECH[:1600])
    (tmp_path / "corrupt.json").write_text('{"id": "corrupt", "status": "rec')
    (tmp_path / "no-sidecar.json").unlink()
    (tmp_path / "no-status.json").write_text("[1, 2, 3]")
    (tmp_path / "stray.json").write_text("{}")  # a sidecar without audio is ignored
    with caplog.at_level(logging.WARNING, logger="desktop.journal"):
        unfinished = Journal(tmp_path).unfinished()
    assert [e.id for e in unfinished] == ["good"]
    warned = caplog.text
    assert "corrupt.json" in warned and "no-sidecar.json" in warned and "no-status.json" in warned
    # The audio of a damaged entry can still be read, and marking it rebuilds the sidecar.
    assert len(journal.read("corrupt")) == 1600
    journal.mark("no-sidecar", "recording")
    assert {e.id for e in journal.unfinished()} == {"good", "no-sidecar"}


def test_export_wav_is_16k_mono_and_matches(tmp_path):
    journal = Journal(tmp_path / "j")
    with journal.open("exp") as writer:
        write_chunks(writer, SPEECH)
    entry = journal.entries()[0]
    out = journal.export_wav(entry, tmp_path / "out.wav")
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    data, rate = sf.read(str(out), dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(data, journal.read(entry))


def test_discard_removes_both_files(tmp_path):
    journal = Journal(tmp_path)
    journal.open("one").close()
    with journal.open("two") as writer:
        writer.append(SPEECH[:1600])
    journal.discard("one")
    journal.discard(journal.entries()[0])
    journal.discard("never-existed")
    assert list(tmp_path.iterdir()) == []
    assert journal.entries() == []


def test_ids_are_checked_and_never_reused(tmp_path):
    journal = Journal(tmp_path)
    for bad in ("", "../escape", "a/b", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            journal.open(bad)
    journal.open("same").close()
    with pytest.raises(FileExistsError):
        journal.open("same")
    assert [e.status for e in journal.entries()] == ["done"]


def test_missing_folder_lists_nothing(tmp_path):
    assert Journal(tmp_path / "absent").unfinished() == []
