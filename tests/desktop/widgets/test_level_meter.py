"""LevelMeter: dBFS mapping, peak hold and decay on its timer, zone painting."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from PySide6.QtCore import QSize

from desktop.capture import SILENCE_DBFS, level_dbfs
from desktop.widgets.level_meter import PEAK_HOLD_MS, ZONES, LevelMeter


@pytest.fixture
def meter(qtbot) -> LevelMeter:
    widget = LevelMeter()
    qtbot.addWidget(widget)
    return widget


@pytest.mark.parametrize(
    ("dbfs", "percent"),
    [
        (-60.0, 0),
        (-45.0, 25),
        (-30.0, 50),
        (-6.0, 90),
        (0.0, 100),
        (6.0, 100),
        (-75.0, 0),
        (SILENCE_DBFS, 0),
        (-math.inf, 0),
        (math.nan, 0),
    ],
)
def test_maps_minus_60_to_0_dbfs_onto_0_to_100(meter: LevelMeter, dbfs: float, percent: int):
    meter.set_level(dbfs)
    assert meter.level_percent() == percent


def test_takes_capture_levels(meter: LevelMeter) -> None:
    t = np.arange(16_000) / 16_000
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)  # full scale: about -3 dBFS
    meter.set_level(level_dbfs(sine))
    assert meter.level_percent() == 95
    meter.set_level(level_dbfs(np.zeros(160, np.float32)))
    assert meter.level_percent() == 0


def test_peak_holds_then_decays_within_about_a_second(qtbot, meter: LevelMeter) -> None:
    meter.set_level(0.0)
    began = time.monotonic()
    meter.set_level(-60.0)
    assert meter.level_percent() == 0
    assert meter.peak_percent() == 100
    qtbot.waitUntil(lambda: meter.peak_percent() < 100, timeout=2000)
    assert time.monotonic() - began >= PEAK_HOLD_MS / 1000 * 0.9
    qtbot.waitUntil(lambda: meter.peak_percent() == 0, timeout=3000)
    elapsed = time.monotonic() - began
    assert 0.8 <= elapsed <= 3.0, elapsed
    qtbot.waitUntil(lambda: not meter._timer.isActive(), timeout=500)  # the timer stops


def test_peak_rises_with_the_level_and_stops_at_it(qtbot, meter: LevelMeter) -> None:
    meter.set_level(-30.0)
    assert meter.peak_percent() == 50
    meter.set_level(-6.0)
    assert (meter.level_percent(), meter.peak_percent()) == (90, 90)
    meter.set_level(-30.0)
    qtbot.waitUntil(lambda: meter.peak_percent() == 50, timeout=3000)  # falls to the level only
    qtbot.wait(100)
    assert meter.peak_percent() == 50


def test_reset(meter: LevelMeter) -> None:
    meter.set_level(-3.0)
    meter.set_level(-40.0)
    meter.reset()
    assert (meter.level_percent(), meter.peak_percent()) == (0, 0)


def test_size_hint(meter: LevelMeter) -> None:
    assert meter.sizeHint() == QSize(160, 14)
    assert meter.minimumSizeHint().width() < 160


def test_paints_lit_and_unlit_zones(meter: LevelMeter) -> None:
    meter.resize(200, 14)
    meter.set_level(-30.0)  # 50 %: half the green zone lit
    image = meter.grab().toImage()
    y = image.height() // 2

    def colour_at(percent: float) -> str:
        return image.pixelColor(round(1 + (image.width() - 2) * percent / 100), y).name()

    (_, green, dark_green), (_, _, dark_yellow), (_, _, dark_red) = ZONES
    assert colour_at(25) == green.name()
    assert colour_at(60) == dark_green.name()
    assert colour_at(80) == dark_yellow.name()
    assert colour_at(95) == dark_red.name()

    meter.set_level(0.0)
    image = meter.grab().toImage()
    assert colour_at(95) == ZONES[2][1].name()
    assert colour_at(80) == ZONES[1][1].name()
