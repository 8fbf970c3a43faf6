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


def test_served_models_from_flag_or_config_list_default_first(tmp_path):
    from edge_server.config import served_models

    assert served_models(load_settings(None, {})) == ("moonshine-tiny-en",)
    assert served_models(load_settings(None, {"noop_engine": True})) == ("noop",)
    both = ("moonshine-base-en", "moonshine-tiny-en")
    assert served_models(load_settings(None, {"model": " moonshine-base-en,moonshine-tiny-en"})
                         ) == both
    cfg = tmp_path / "s.toml"
    cfg.write_text('models = ["moonshine-base-en", "moonshine-tiny-en"]\n')
    assert served_models(load_settings(cfg, {})) == both
    with pytest.raises(ValueError, match=r"unknown model 'tiny'.*moonshine-base-en, "
                                         r"moonshine-tiny-en\)"):
        served_models(load_settings(None, {"model": "moonshine-tiny-en,tiny"}))
    with pytest.raises(ValueError, match="unknown model 'silero-vad'"):
        served_models(load_settings(None, {"model": "silero-vad"}))
    with pytest.raises(ValueError, match="twice"):
        served_models(load_settings(None, {"model": "moonshine-tiny-en,moonshine-tiny-en"}))


def test_server_command_names_the_catalog_ids_for_an_unknown_model():
    import contextlib
    import io

    from edge_server.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["--model", "moonshine-tiny-en,whisper-huge", "--port", "0"]) == 2
    assert "unknown model 'whisper-huge'" in err.getvalue()
    assert "moonshine-base-en, moonshine-tiny-en" in err.getvalue()
