import json
import subprocess
import sys

from tests.conftest import DEV


def earshot(*args):
    return subprocess.run([sys.executable, "-m", "desktop.cli", *args],
                          capture_output=True, text=True, timeout=600)


def test_eval_reports_wer_and_real_time_factor():
    out = earshot("eval", str(DEV / "transcripts.tsv"), "--set", "sherpa-test-wavs",
                  "--set", "librispeech-test-clean-kw", "--set", "pocketsphinx-testdata", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["sets"]["ALL"]["utterances"] == 18 and report["sets"]["ALL"]["words"] == 230
    assert report["sets"]["ALL"]["wer"] <= 0.035
    assert 0 < report["rtf"] < 0.2


def test_eval_table_and_bad_tsv(tmp_path):
    out = earshot("eval", str(DEV / "transcripts.tsv"), "--set", "sherpa-test-wavs")
    assert out.returncode == 0
    assert "real-time factor" in out.stdout and "sherpa-test-wavs" in out.stdout
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    out = earshot("eval", str(bad))
    assert out.returncode == 1 and "missing column(s) path, set, transcript" in out.stderr


def test_models_list_shows_installed_defaults():
    out = earshot("models", "list")
    assert out.returncode == 0
    assert "moonshine-tiny-en" in out.stdout and "installed" in out.stdout


def test_unknown_model_is_one_line():
    out = earshot("transcribe", "--model", "nope", str(DEV / "sherpa-test-wavs/0.wav"))
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "earshot: error: unknown model 'nope' "
        "(known: moonshine-base-en, moonshine-tiny-en, silero-vad)")
