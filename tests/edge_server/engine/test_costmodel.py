"""The decoder step cost model: lookup per (model, device[, form]), fitting, planning."""

import pytest

from edge_server.engine.costmodel import (
    COSTS,
    StepCost,
    fit_step_cost,
    plan_groups,
    step_cost,
)


def test_lookup_prefers_the_form_then_the_model_then_the_device():
    assert step_cost("moonshine-tiny-en", "cpu", "int8") is COSTS[("moonshine-tiny-en", "cpu",
                                                                   "int8")]
    assert step_cost("moonshine-tiny-en", "cpu", "float") is COSTS[("moonshine-tiny-en", "cpu")]
    assert step_cost("moonshine-base-en", "cuda") is COSTS[("moonshine-base-en", "cuda")]
    # a model with no entry borrows the device's first one
    assert step_cost("some-new-model", "cuda") is COSTS[("moonshine-tiny-en", "cuda")]


def test_every_constant_is_fitted_on_its_device():
    """The CUDA entries were guesses (measured=False) until bench/gpu_check fitted them."""
    assert {key[1] for key in COSTS} == {"cpu", "cuda"}
    assert all(c.measured for c in COSTS.values())


def test_fit_recovers_the_constants_of_exact_samples():
    truth = StepCost(2.0, 0.5, 0.003)
    samples = [(r, f, truth.step_ms(r, f)) for r in (1, 2, 4, 8) for f in (40, 200, 400)]
    fitted = fit_step_cost(samples)
    assert fitted.fixed_ms == pytest.approx(2.0, abs=1e-3)
    assert fitted.row_ms == pytest.approx(0.5, abs=1e-3)
    assert fitted.row_frame_ms == pytest.approx(0.003, abs=1e-5)
    with pytest.raises(ValueError, match="at least 3"):
        fit_step_cost(samples[:2])


def test_plan_separates_long_from_short_and_keeps_equal_lengths_together():
    cpu = StepCost(1.65, 0.41, 0.0025)
    frames = {0: 40, 1: 42, 2: 41, 3: 700}  # three 1 s clips and one 17 s clip
    assert sorted(map(sorted, plan_groups(frames, cpu))) == [[0, 1, 2], [3]]
    equal = {i: 100 for i in range(10)}
    assert plan_groups(equal, cpu) == [list(range(10))]
    # where rows are nearly free (a GPU), padding is cheap: one group
    gpu = StepCost(2.5, 0.02, 0.0002)
    assert plan_groups(frames, gpu) == [[0, 2, 1, 3]]
