"""The dictation journal on a real folder with real speech: writing, crash recovery,
tolerance of damaged files, export and removal, owner-only file modes."""

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
from tests.file_modes import mode, posix_only

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


# -- audio at rest -------------------------------------------------------------------------



@posix_only
def test_files_are_owner_only_and_created_folders_0700(tmp_path, umask_022):
    folder = tmp_path / "data" / "earshot" / "journal"
    journal = Journal(folder)
    writer = journal.open("private")
    write_chunks(writer, SPEECH[:16000])
    assert mode(folder / "private.pcm") == 0o600
    assert mode(folder / "private.json") == 0o600
    writer.close()  # rewrites the sidecar through a temp file
    assert mode(folder / "private.pcm") == 0o600
    assert mode(folder / "private.json") == 0o600
    for created in (folder, folder.parent, folder.parent.parent):
        assert mode(created) == 0o700, created
    journal.mark("private", "recording")
    assert mode(journal.export_recovery("private")) == 0o600
    shared = tmp_path / "shared.wav"
    shared.write_bytes(b"")
    assert mode(shared) == 0o644
    assert mode(journal.export_wav("private", shared)) == 0o600  # an existing file too
    assert sf.info(str(shared)).frames == 16000


@posix_only
def test_existing_folder_keeps_its_mode(tmp_path, umask_022):
    (tmp_path / "shared").mkdir(mode=0o755)
    Journal(tmp_path / "shared").open("x").close()
    assert mode(tmp_path / "shared") == 0o755
    assert mode(tmp_path / "shared" / "x.pcm") == 0o600


def test_recovery_copy_sits_next_to_the_entry_until_marked(tmp_path):
    journal = Journal(tmp_path)
    writer = journal.open("crashed")
    write_chunks(writer, SPEECH[:32000])
    entry = journal.unfinished()[0]
    wav = journal.export_recovery(entry)
    assert wav == journal.recovery_path("crashed") == tmp_path / "crashed.wav"
    np.testing.assert_array_equal(sf.read(str(wav), dtype="float32")[0], journal.read(entry))
    assert [e.id for e in journal.entries()] == ["crashed"]  # the copy is not an entry
    journal.mark(entry, "recording")
    assert wav.exists()
    journal.mark(entry, "recovered")  # re-transcribed: the copy's job is done
    assert not wav.exists()
    assert journal.read(entry).size == 32000  # the journaled audio itself stays
    writer.close()


def test_discard_removes_every_file_of_the_dictation_only(tmp_path):
    journal = Journal(tmp_path)
    for name in ("gone", "kept"):
        with journal.open(name) as writer:
            writer.append(SPEECH[:1600])
        journal.export_recovery(name)
        (tmp_path / f".{name}.json.abc123.tmp").write_text("{")  # left by a crash mid-write
    journal.discard("gone")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".kept.json.abc123.tmp", "kept.json", "kept.pcm", "kept.wav"
    ]
    journal.discard("gone")  # nothing left: fine


def test_delete_audio_by_the_path_history_stores(tmp_path):
    journal = Journal(tmp_path / "journal")
    with journal.open("d1") as writer:
        writer.append(SPEECH[:1600])
    journal.export_recovery("d1")
    journal.mark("d1", "recording")
    assert journal.delete_audio(str(tmp_path / "journal" / "." / "d1.pcm"))
    assert list((tmp_path / "journal").iterdir()) == []
    assert journal.delete_audio(tmp_path / "journal" / "d1.pcm")  # already gone: fine


def test_delete_audio_refuses_paths_outside_the_journal(tmp_path, caplog):
    journal = Journal(tmp_path / "journal")
    journal.open("mine").close()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    victims = [outside / "mine.pcm", outside / "mine.json", outside / "mine.wav",
               tmp_path / "notes.txt", tmp_path / "journal" / "mine.json"]
    for victim in victims[:-1]:
        victim.write_bytes(b"precious")
    tampered = [
        outside / "mine.pcm",  # same name, other folder
        tmp_path / "journal" / ".." / "elsewhere" / "mine.pcm",  # climbs out
        tmp_path / "journal" / ".." / "notes.txt",
        tmp_path / "journal" / "mine.json",  # inside, but not an audio path
        tmp_path / "journal" / "..pcm",  # not a valid id
        "/etc/passwd",
        "",
    ]
    with caplog.at_level(logging.WARNING, logger="desktop.journal"):
        for path in tampered:
            assert journal.delete_audio(path) is False, path
    assert "not deleting" in caplog.text
    for victim in victims:
        assert victim.exists(), victim
    assert (tmp_path / "journal" / "mine.pcm").exists()


@posix_only
def test_delete_audio_through_a_symlinked_journal_folder(tmp_path):
    real = tmp_path / "real"
    Journal(real).open("d").close()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    assert Journal(tmp_path / "link").delete_audio(real / "d.pcm")
    assert list(real.iterdir()) == []


def test_writer_of_a_dictation_deleted_while_recording_closes_quietly(tmp_path):
    journal = Journal(tmp_path)
    writer = journal.open("deleted")
    writer.append(SPEECH[:1600])
    journal.discard("deleted")
    writer.append(SPEECH[:1600])
    writer.close()  # no FileNotFoundError, and nothing is brought back
    assert list(tmp_path.iterdir()) == []


def test_an_incomplete_dictation_closed_as_recording_stays_offered_for_recovery(tmp_path):
    """What the app does when a segment got no text: the entry is closed, audio whole on
    disk, but stays in `unfinished()` until a recovery marks it."""
    journal = Journal(tmp_path)
    writer = journal.open("incomplete")
    write_chunks(writer, SPEECH)
    done = journal.open("complete")
    write_chunks(done, SPEECH[:16_000])
    done.close()
    writer.close(status="recording")
    assert writer.closed
    assert [e.id for e in journal.unfinished()] == ["incomplete"]
    np.testing.assert_array_equal(journal.read("incomplete"), round_trip(SPEECH))
    journal.export_recovery("incomplete")
    journal.mark("incomplete", "recovered")
    assert journal.unfinished() == [] and not journal.recovery_path("incomplete").exists()
