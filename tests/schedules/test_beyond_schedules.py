"""Schedules beyond the paper: later-layer forgetting, shrink-perturb, cosine restarts."""

import math

import pytest

from schedules import BLOCKS, build_schedule


def test_later_layer_forgetting_reinitialises_from_the_chosen_block_up():
    plan = build_schedule(
        {"name": "later_layer_forgetting", "forget_from": "B4", "period_epochs": 2, "periods": 3}
    ).plan()
    starts = [s for s in plan if s.first_in_period]
    assert starts[0].resets == {}
    for step in starts[1:]:
        assert set(step.resets) == {"B4", "B5"}
        assert all(r.kind == "random" for r in step.resets.values())
        assert step.lr["B1"] == pytest.approx(0.001) and step.lr["B4"] == pytest.approx(0.01)


def test_shrink_perturb_applies_its_coefficients_to_the_chosen_blocks():
    plan = build_schedule(
        {"name": "shrink_perturb", "shrink": 0.5, "perturb": 0.2, "blocks": ["B1", "B2"], "period_epochs": 2}
    ).plan()
    assert plan[0].resets == {}
    boundary = plan[2]
    assert set(boundary.resets) == {"B1", "B2"}
    reset = boundary.resets["B1"]
    assert (reset.kind, reset.shrink, reset.perturb) == ("shrink_perturb", 0.5, 0.2)


def test_cosine_restarts_follow_a_half_cosine_and_keep_momentum():
    plan = build_schedule(
        {"name": "cosine_restarts", "period_epochs": 4, "periods": 2, "lr": 0.1, "floor": 0.0}
    ).plan()
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * i / 4)) for i in range(4)] * 2
    assert [s.lr["B3"] for s in plan] == pytest.approx(expected)
    assert [s.reset_optimizer for s in plan] == [True] + [False] * 7
    assert all(s.resets == {} for s in plan)


def test_cosine_restarts_period_mult_grows_periods():
    plan = build_schedule(
        {"name": "cosine_restarts", "period_epochs": 2, "periods": 3, "period_mult": 2}
    ).plan()
    assert [s.period for s in plan] == [1] * 2 + [2] * 4 + [3] * 8


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "later_layer_forgetting", "forget_from": "B9"}, "unknown block 'B9'"),
        ({"name": "shrink_perturb", "shrink": -1.0}, "shrink >= 0"),
        ({"name": "shrink_perturb", "blocks": ["head2"]}, "unknown block"),
        ({"name": "cosine_restarts", "floor": 2.0}, "floor must be in"),
        ({"name": "cosine_restarts", "periods": 0}, "requires positive periods"),
    ],
)
def test_bad_parameters_are_rejected(spec, message):
    from schedules import ScheduleError

    with pytest.raises(ScheduleError, match=message):
        build_schedule(spec)


def test_shrink_perturb_covers_every_block_by_default():
    plan = build_schedule({"name": "shrink_perturb", "period_epochs": 1, "periods": 2}).plan()
    assert set(plan[1].resets) == set(BLOCKS)
