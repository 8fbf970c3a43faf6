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

    if not (SHARED / "models" / "SHA256SUMS").is_file():
        pytest.skip(f"no {SHARED / 'models'} to compare with")
    sums = {}
    for line in (SHARED / "models" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    checked = 0
    for spec in load_catalog().models.values():
        if not any(name.startswith(f"{spec.id}/") for name in sums):
            continue  # a model ../shared does not hold (fetched into the cache instead)
        for f in spec.files:
            assert sums[f"{spec.id}/{f.name}"] == f.sha256
            checked += 1
    assert checked >= 4


def test_unknown_model_names_the_known_ones():
    with pytest.raises(UnknownModelError,
                       match="known: moonshine-base-en, moonshine-tiny-en, silero-vad"):
        load_catalog().get("whisper-huge")


def test_forms_name_files_by_role_with_devices_and_defaults():
    catalog = load_catalog()
    for model_id in ("moonshine-tiny-en", "moonshine-base-en"):
        spec = catalog.get(model_id)
        assert [f.name for f in spec.all_forms()] == ["int8", "float"]
        int8, flt = spec.form("int8"), spec.form("float", "cuda")
        assert int8.devices == ("cpu",) and flt.devices == ("cpu", "cuda")
        assert int8.files == {"encoder": "encoder_model.ort",
                              "decoder": "decoder_model_merged.ort", "tokenizer": "tokenizer.bin"}
        assert flt.files["decoder"] == "decoder_model_merged.float.onnx"
        assert spec.default_form("cuda") == "float"
        prepared = {p.name: p for p in spec.prepared}
        assert set(prepared) == {"encoder_model.float.onnx", "decoder_model_merged.float.onnx"}
        assert all(len(p.sha256) == 64 and p.size > 1e6 for p in prepared.values())
        assert prepared["encoder_model.float.onnx"].source == "encoder_model.ort"
    assert catalog.get("moonshine-base-en").file("decoder_model_merged.float.onnx").recipe == (
        "float+mask")
    assert catalog.get("moonshine-tiny-en").file("decoder_model_merged.float.onnx").recipe == (
        "float")
    vad = catalog.get("silero-vad")
    assert vad.form().files == {"model": "silero_vad.onnx"}


def test_a_model_without_forms_has_the_shipped_form():
    text = (
        'default_asr = "x"\ndefault_vad = "x"\n[models.x]\nkind = "asr"\nfamily = "f"\n'
        'language = "en"\ndescription = "d"\nlicence = "MIT"\nsource = { pypi = "x==1" }\n'
        'files = [{ name = "a.onnx", member = "m/a.onnx", size = 1, sha256 = "0" }]\n')
    spec = parse_catalog(text).get("x")
    assert spec.form(None, "cuda").name == "shipped"
    assert spec.form("shipped").files == {"a.onnx": "a.onnx"}


BASE = (
    'default_asr = "x"\ndefault_vad = "x"\n[models.x]\nkind = "asr"\nfamily = "f"\n'
    'language = "en"\ndescription = "d"\nlicence = "MIT"\nsource = { pypi = "x==1" }\n'
    'files = [{ name = "a.ort", member = "m/a.ort", size = 1, sha256 = "0" }]\n')


@pytest.mark.parametrize(("extra", "error"), [
    ('prepared = [{ name = "b.onnx", source = "zzz.ort", recipe = "float", size = 1, '
     'sha256 = "0" }]\n', "source zzz.ort is not a shipped file"),
    ('[models.x.forms.f]\ndevices = ["cpu"]\nfiles = { encoder = "nope.onnx" }\n',
     "form 'f' names unknown file"),
    ('[models.x.forms.f]\ndevices = ["tpu"]\nfiles = { encoder = "a.ort" }\n',
     "devices must be among cpu, cuda"),
    ('default_form = { cuda = "f" }\n[models.x.forms.f]\ndevices = ["cpu"]\n'
     'files = { encoder = "a.ort" }\n', "default form for cuda: form 'f' .* does not run on cuda"),
])
def test_forms_that_do_not_add_up_are_reported(extra, error):
    with pytest.raises(ValueError, match=f"catalog entry 'x' is malformed: .*{error}"):
        parse_catalog(BASE + extra)


def test_malformed_entry_is_reported():
    text = 'default_asr = "x"\ndefault_vad = "x"\n[models.x]\nkind = "asr"\n'
    with pytest.raises(ValueError, match="catalog entry 'x' is malformed"):
        parse_catalog(text)
