import pytest

from models.catalog import UnknownModelError, load_catalog, parse_catalog


def test_catalog_lists_default_models_with_hashes_and_sources():
    catalog = load_catalog()
    asr = catalog.get(catalog.default_asr)
    assert asr.id == "moonshine-tiny-en" and asr.kind == "asr" and asr.licence == "MIT"
    assert asr.source.pypi == "moonshine-voice==0.1.0"
    assert {f.name for f in asr.files} == {
        "encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"}
    assert all(len(f.sha256) == 64 and f.size > 0 for f in asr.files)
    vad = catalog.get(catalog.default_vad)
    assert vad.kind == "vad" and vad.files[0].member == "silero_vad/data/silero_vad.onnx"


def test_catalog_matches_shared_checksums(tmp_path):
    from tests.conftest import SHARED

    sums = {}
    for line in (SHARED / "models" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    for spec in load_catalog().models.values():
        for f in spec.files:
            assert sums[f"{spec.id}/{f.name}"] == f.sha256


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError, match="known: moonshine-tiny-en, silero-vad"):
        load_catalog().get("whisper-huge")


def test_malformed_entry_is_reported():
    text = 'default_asr = "x"\ndefault_vad = "x"\n[models.x]\nkind = "asr"\n'
    with pytest.raises(ValueError, match="catalog entry 'x' is malformed"):
        parse_catalog(text)
