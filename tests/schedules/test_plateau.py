"""Rollback on plateau: conditional period ends, decided by a pure function of the run's history."""

import dataclasses

import pytest

from schedules import Plateau, ScheduleError, build_schedule, next_epoch, registered, settle


@pytest.mark.parametrize(
    "values, reached",
    [
        ([3.0], False),
        ([3.0, 3.0], False),  # one epoch without improvement: patience 2 not reached yet
        ([3.0, 3.0, 3.0], True),
        ([3.0, 2.0, 2.5, 2.1], True),  # 2.5 and 2.1 do not beat 2.0
        ([3.0, 2.0, 2.5, 1.9], False),  # 1.9 does: the count restarts
        ([3.0, 2.5, 2.0, 1.5], False),
    ],
)
def test_loss_plateau_values_before_at_and_after_patience(values, reached):
    assert Plateau("loss", patience=2).reached(values) is reached


def test_min_delta_is_the_improvement_that_counts_and_map_must_rise():
    loss = Plateau("loss", patience=1, min_delta=0.5)
    assert loss.reached([3.0, 2.5])  # exactly min_delta lower: not an improvement
    assert not loss.reached([3.0, 2.4])
    assert loss.reached([3.0, 2.4, 2.0])  # 0.4 below the best 2.4 is not enough
    val = Plateau("val_mAP", patience=1, min_delta=0.1)
    assert not val.reached([0.2, 0.31]) and val.reached([0.2, 0.3]) and val.reached([0.2, 0.1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "accuracy"}, "unknown plateau metric 'accuracy'; valid: loss, val_mAP"),
        ({"patience": 0}, "requires positive patience"),
        ({"patience": 1.5}, "patience must be a whole number"),
        ({"min_delta": -0.1}, "min_delta must be a finite number >= 0"),
    ],
)
def test_bad_plateaus_fail_at_construction(kwargs, message):
    with pytest.raises(ScheduleError, match=message):
        Plateau(**kwargs)


def test_plateau_rollback_is_incremental_rollback_with_conditional_period_ends():
    spec = {"period_epochs": 4, "periods": 3}
    plain = build_schedule({"name": "incremental_rollback", **spec}).plan()
    steps = build_schedule({"name": "plateau_rollback", **spec, "patience": 2, "min_delta": 0.01}).plan()
    assert [dataclasses.replace(s, until=None) for s in steps] == plain  # the maximum plan
    until = Plateau("loss", 2, 0.01)
    assert [s.until for s in steps] == [until, until, until, None] * 3  # the last epoch ends anyway


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"patience": 3, "period_epochs": 4}, "patience=3 never ends a period of period_epochs=4 early"),
        ({"metric": "rank1"}, "schedule.metric must be one of loss, val_mAP"),
        ({"min_delta": -1.0}, "min_delta must be a finite number >= 0"),
    ],
)
def test_plateau_rollback_parameters_are_checked(spec, message):

    with pytest.raises(ScheduleError, match=message):
        build_schedule({"name": "plateau_rollback", **spec})


@pytest.mark.parametrize("name", sorted(registered()))
def test_without_a_plateau_the_next_epoch_is_the_plan_s_next(name):
    plan = build_schedule({"name": name}).plan()
    if any(step.until is not None for step in plan):
        pytest.skip("periods may end early")
    history = []
    for step in plan:
        assert next_epoch(plan, history) == step
        assert settle(step, [*history, {"period": step.period}]) is step
        history.append({"epoch": step.epoch, "period": step.period, "loss": 1.0})
    assert next_epoch(plan, history) is None


def records(*periods_and_losses):
    return [{"epoch": i + 1, "period": p, "loss": v} for i, (p, v) in enumerate(periods_and_losses)]


def test_an_early_end_starts_the_next_period_at_once_and_the_last_one_ends_the_run():
    spec = {"name": "plateau_rollback", "period_epochs": 4, "periods": 2, "patience": 1}
    plan = build_schedule(spec).plan()
    # epoch 2 does not improve on epoch 1: period 1 ends after it
    history = records((1, 2.0), (1, 2.0))
    assert settle(plan[1], history).last_in_period
    step = next_epoch(plan, history)
    assert (step.epoch, step.period, step.epoch_in_period) == (3, 2, 1)
    assert set(step.resets) == {"B2", "B3", "B4", "B5"} and step.reset_optimizer
    assert step == dataclasses.replace(plan[4], epoch=3)
    # improving epochs run on, up to the maximum length
    improving = records((1, 4.0), (1, 3.0), (1, 2.0))
    assert not settle(plan[2], improving).last_in_period
    assert next_epoch(plan, improving) == plan[3]
    full = records((1, 4.0), (1, 3.0), (1, 2.0), (1, 1.0))
    assert next_epoch(plan, full) == plan[4]  # the maximum end is not conditional
    # the last period ending early ends the run
    assert next_epoch(plan, [*history, *records((2, 1.0), (2, 1.0))]) is None
    assert next_epoch(plan, [*history, *records((2, 1.0), (2, 0.5))]) == dataclasses.replace(plan[6], epoch=5)


def test_val_map_plateaus_read_the_validation_metric():
    plan = build_schedule(
        {"name": "plateau_rollback", "period_epochs": 3, "periods": 2, "patience": 1, "metric": "val_mAP"}
    ).plan()
    rising = [{"period": 1, "loss": 1.0, "val_mAP": 0.1}, {"period": 1, "loss": 9.0, "val_mAP": 0.2}]
    assert next_epoch(plan, rising) == plan[2]
    falling = [{"period": 1, "loss": 9.0, "val_mAP": 0.2}, {"period": 1, "loss": 1.0, "val_mAP": 0.1}]
    assert next_epoch(plan, falling).period == 2
