"""loadtest.plot: a real PNG of latency and loss against streams."""

from loadtest.plot import available, write_png
from loadtest.report import combine_repeats
from tests.loadtest.test_report import run_row


def test_the_plot_is_a_png(tmp_path):
    assert available()
    levels = [combine_repeats([run_row(0.3), run_row(0.4)]),
              combine_repeats([run_row(1.2, lost=2), run_row(1.5)])]
    levels[1]["streams"] = 8
    path = tmp_path / "sweep.png"
    write_png({"mode": "sweep", "bound_s": 1.0, "levels": levels}, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
