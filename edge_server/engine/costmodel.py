"""Decoder-step cost model per (model, device), and the batch planner that uses it.

One greedy decoder step over a batch costs about
`fixed + rows x (per_row + per_row_frame x padded encoder frames)` milliseconds: every row
pays cross-attention over the longest encoder output of its group, every extra group pays
the fixed per-step cost again. `plan_groups` splits a batch into contiguous (by length)
groups minimising that modelled time. The constants are fitted by
`python -m bench.engine_throughput --fit` (least squares over timed steps); the CUDA ones
by `bench/gpu_check.py` on an H200. `measured=False` marks a constant that is a guess.

Pure functions and frozen data; thread-safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MASK_STRIDE = 384  # samples per encoder frame
FRAMES_PER_SECOND = 16_000 / MASK_STRIDE


@dataclass(frozen=True)
class StepCost:
    """Milliseconds of one decoder step: fixed + per live row + per row per padded frame."""

    fixed_ms: float
    row_ms: float
    row_frame_ms: float
    measured: bool = True  # False: a placeholder, not fitted on this kind of device
    note: str = ""

    def step_ms(self, rows: int, frames: int) -> float:
        return self.fixed_ms + rows * (self.row_ms + self.row_frame_ms * frames)


# Fitted with `python -m bench.engine_throughput --fit --threads 1 [--form F]` on the 2-core
# dev machine. Keys: (model id, device) for the device's default form, or (model id, device,
# form) for another form. The int8 figures were fitted on a quiet machine; the float ones on
# 2026-11-30 while other jobs kept the load average near 3 (refitting int8 then gave
# 3.34 / 0.418 / 0.0029: the fixed term about 2x inflated, the per-row terms as quiet).
COSTS: dict[tuple[str, ...], StepCost] = {
    ("moonshine-tiny-en", "cpu"): StepCost(6.11, 0.520, 0.00275, note="float form, load ~3"),
    ("moonshine-tiny-en", "cpu", "int8"): StepCost(1.65, 0.41, 0.0025, note="int8 .ort, quiet"),
    ("moonshine-base-en", "cpu"): StepCost(11.14, 0.919, 0.00630, note="float form, load ~3"),
    # GPU: fitted by bench/gpu_check.py --plan lease on one NVIDIA H200 (onnxruntime-gpu
    # 1.28, 2026-11-30; docs/benchmarks.md "GPU"): the launch sequence of a step dominates,
    # rows are nearly free and the encoder length did not show (fitted as 0).
    ("moonshine-tiny-en", "cuda"): StepCost(4.2448, 0.056, 0.0, note="float form, H200"),
    ("moonshine-base-en", "cuda"): StepCost(5.4277, 0.0713, 0.0, note="float form, H200"),
}
FALLBACK = COSTS[("moonshine-tiny-en", "cpu")]


def step_cost(model_id: str, device: str, form: str | None = None) -> StepCost:
    """The cost model of `model_id` (form `form`) on `device` ('cpu' or 'cuda'): the form's
    own entry, else the model's on that device, else the first on that device, else tiny
    on CPU."""
    for key in ((model_id, device, form), (model_id, device)):
        if key in COSTS:
            return COSTS[key]
    same_device = [c for key, c in COSTS.items() if key[1] == device]
    return same_device[0] if same_device else FALLBACK


def expected_tokens(frames: int) -> float:
    """Typical token count of an utterance with this many encoder frames (~4 per second)."""
    return 2.0 + 4.0 * frames / FRAMES_PER_SECOND


def plan_groups(
    frames: dict[int, int], cost: StepCost = FALLBACK, max_rows: int = 64
) -> list[list[int]]:
    """Split rows into decoder sub-batches of similar length, minimising modelled time.

    A dynamic programme over rows sorted by length picks the cheapest contiguous split.
    Returns lists of row keys; every key appears once.
    """
    order = sorted(frames, key=frames.__getitem__)
    n = len(order)
    best = [0.0] + [float("inf")] * n
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = frames[order[j - 1]]
        row_cost = 0.0
        for i in range(j - 1, max(-1, j - 1 - max_rows), -1):
            row_cost += expected_tokens(frames[order[i]]) * (
                cost.row_ms + cost.row_frame_ms * longest)
            total = best[i] + expected_tokens(longest) * cost.fixed_ms + row_cost
            if total < best[j]:
                best[j], cut[j] = total, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def fit_step_cost(samples: Sequence[tuple[int, int, float]], note: str = "") -> StepCost:
    """Least-squares StepCost from (rows, padded frames, step ms) measurements.

    Needs at least three samples that vary in rows and frames; negative coefficients
    (noise) are clipped to zero.
    """
    if len(samples) < 3:
        raise ValueError("need at least 3 (rows, frames, ms) samples to fit a step cost")
    a = np.array([[1.0, r, r * f] for r, f, _ in samples])
    y = np.array([ms for _, _, ms in samples])
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    fixed, row, row_frame = (max(0.0, float(c)) for c in coef)
    return StepCost(round(fixed, 4), round(row, 4), round(row_frame, 6), note=note)
