import pytest

from edge_server.config import load_settings


def test_file_then_overrides(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('workers = 2\nmax_sessions = 9\n[segmenter]\nendpoint_ms = 800\n')
    s = load_settings(cfg, {"max_sessions": 5, "max_segment_s": 12.0, "port": None})
    assert (s.workers, s.max_sessions, s.port) == (2, 5, 8765)
    assert (s.segmenter.endpoint_ms, s.segmenter.max_segment_s) == (800, 12.0)


def test_unknown_keys_and_bad_files(tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text("wokers = 2\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_settings(cfg, {})
    cfg.write_text("workers = = 2\n")
    with pytest.raises(ValueError, match="config file"):
        load_settings(cfg, {})
