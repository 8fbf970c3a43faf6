import os
import shutil

import pytest

from models import store
from models.catalog import UnknownFormError, load_catalog
from models.store import (
    ModelNotReadyError,
    model_status,
    require_form,
    require_model,
    search_dirs,
)
from tests.conftest import SHARED
from tests.models.conftest import copy_model, shipped_dir


@pytest.fixture
def models_copy(tmp_path, monkeypatch):
    """A writable copy of the silero-vad model in an EARSHOT_MODELS_DIR of our own."""
    shutil.copytree(shipped_dir("silero-vad"), tmp_path / "silero-vad")
    monkeypatch.setenv("EARSHOT_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_whole_model_is_found(models_copy):
    assert require_model("silero-vad") == models_copy / "silero-vad"
    assert not model_status("moonshine-tiny-en").installed


def test_missing_model_says_how_to_fetch(models_copy):
    with pytest.raises(ModelNotReadyError, match=r"not installed.*earshot models fetch moonshine"):
        require_model("moonshine-tiny-en")


def test_truncated_file_is_named_with_a_fix(models_copy):
    path = models_copy / "silero-vad" / "silero_vad.onnx"
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotReadyError) as err:
        require_model("silero-vad")
    msg = str(err.value)
    assert "silero_vad.onnx is truncated" in msg and "earshot models fetch silero-vad" in msg


def test_tampered_file_fails_the_checksum(models_copy):
    path = models_copy / "silero-vad" / "silero_vad.onnx"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(ModelNotReadyError, match=r"silero_vad\.onnx is checksum mismatch"):
        require_model("silero-vad")


def test_engine_creation_reports_damage_before_onnxruntime(models_copy):
    from edge_server.vad import SileroVad

    (models_copy / "silero-vad" / "silero_vad.onnx").chmod(0o644)
    (models_copy / "silero-vad" / "silero_vad.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelNotReadyError, match="truncated"):
        SileroVad()


def test_sizes_in_catalog_are_real():
    if not (SHARED / "models").is_dir():
        pytest.skip(f"no {SHARED / 'models'} to compare with")
    checked = 0
    for spec in load_catalog().models.values():
        if not (SHARED / "models" / spec.id).is_dir():
            continue  # a model ../shared does not hold (fetched into the cache instead)
        for f in spec.files:
            assert (SHARED / "models" / spec.id / f.name).stat().st_size == f.size
            checked += 1
    assert checked >= 4


def test_models_dir_may_be_a_list(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("EARSHOT_MODELS_DIR", os.pathsep.join([str(a), "", str(b)]))
    assert search_dirs() == [a, b]
    assert store.fetch_target_dir() == a


@pytest.fixture
def split_dirs(tmp_path, monkeypatch, prepared_dir):
    """`cache` (first, writable: tiny's prepared files) + `ro` (tiny's shipped files)."""
    cache, ro = tmp_path / "cache", tmp_path / "ro"
    copy_model("moonshine-tiny-en", ro)
    (cache / "moonshine-tiny-en").mkdir(parents=True)
    for f in load_catalog().get("moonshine-tiny-en").prepared:
        shutil.copyfile(prepared_dir / "moonshine-tiny-en" / f.name,
                        cache / "moonshine-tiny-en" / f.name)
    monkeypatch.setenv("EARSHOT_MODELS_DIR", os.pathsep.join([str(cache), str(ro)]))
    return cache / "moonshine-tiny-en", ro / "moonshine-tiny-en"


def test_each_file_comes_from_the_first_folder_holding_it_whole(split_dirs):
    cache, ro = split_dirs
    form = require_form("moonshine-tiny-en", "float")
    assert form.name == "float" and form.devices == ("cpu", "cuda")
    assert form.paths == {"encoder": cache / "encoder_model.float.onnx",
                          "decoder": cache / "decoder_model_merged.float.onnx",
                          "tokenizer": ro / "tokenizer.bin"}
    int8 = require_form("moonshine-tiny-en", "int8")
    assert set(int8.paths.values()) == {ro / "encoder_model.ort",
                                        ro / "decoder_model_merged.ort", ro / "tokenizer.bin"}
    assert require_model("moonshine-tiny-en") == ro  # the shipped files, for old callers
    # a whole copy in a later folder wins over a damaged one in an earlier folder
    shutil.copyfile(ro / "tokenizer.bin", cache / "tokenizer.bin")
    (cache / "tokenizer.bin").write_bytes(b"x" * (ro / "tokenizer.bin").stat().st_size)
    assert require_form("moonshine-tiny-en", "float").paths["tokenizer"] == ro / "tokenizer.bin"


def test_default_form_per_device(split_dirs):
    spec = load_catalog().get("moonshine-tiny-en")
    assert require_form("moonshine-tiny-en").name == spec.default_form("cpu")
    assert require_form("moonshine-tiny-en", device="cuda").name == "float"
    with pytest.raises(UnknownFormError, match=r"form 'int8' .* does not run on cuda.*float"):
        require_form("moonshine-tiny-en", "int8", device="cuda")
    with pytest.raises(UnknownFormError, match=r"no form 'fp16' \(forms: int8, float\)"):
        require_form("moonshine-tiny-en", "fp16")
    with pytest.raises(UnknownFormError, match="unknown device 'tpu'"):
        require_form("moonshine-tiny-en", device="tpu")


def test_damaged_prepared_file_is_named_with_the_fix(split_dirs):
    cache, _ = split_dirs
    path = cache / "decoder_model_merged.float.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelNotReadyError) as err:
        require_form("moonshine-tiny-en", "float")
    msg = str(err.value)
    assert "(float form) is damaged" in msg and str(path) in msg
    assert "checksum mismatch" in msg and "earshot models fetch moonshine-tiny-en" in msg
    assert require_form("moonshine-tiny-en", "int8").name == "int8"  # other forms still load
    path.unlink()
    with pytest.raises(ModelNotReadyError, match=r"float form\) is not installed "
                       r"\(decoder_model_merged\.float\.onnx not found"):
        require_form("moonshine-tiny-en", "float")


def test_verified_files_are_not_hashed_again(split_dirs, monkeypatch):
    cache, _ = split_dirs
    store.forget_verified()
    hashed = []
    real = store.sha256_of
    monkeypatch.setattr(store, "sha256_of", lambda p, *a: hashed.append(p) or real(p, *a))
    require_form("moonshine-tiny-en", "float")
    assert len(hashed) == 3
    require_form("moonshine-tiny-en", "float")
    assert len(hashed) == 3  # remembered by (path, size, mtime, inode)
    os.utime(cache / "encoder_model.float.onnx", ns=(1, 1))  # touched: checked again
    require_form("moonshine-tiny-en", "float")
    assert hashed[3:] == [cache / "encoder_model.float.onnx"]
