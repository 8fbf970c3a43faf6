import shutil

import pytest

from models.catalog import load_catalog
from models.store import ModelNotReadyError, model_status, require_model
from tests.conftest import SHARED


@pytest.fixture
def models_copy(tmp_path, monkeypatch):
    """A writable copy of the shared silero-vad model in an EARSHOT_MODELS_DIR of our own."""
    shutil.copytree(SHARED / "models" / "silero-vad", tmp_path / "silero-vad")
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
    for spec in load_catalog().models.values():
        for f in spec.files:
            assert (SHARED / "models" / spec.id / f.name).stat().st_size == f.size
