"""Re-warming: a linear LR warm-up at the start of every period, for any schedule, around its decay."""

import pytest

from schedules import (
    BLOCKS,
    GROUPS,
    ConstantDecay,
    CosineDecay,
    ScheduleError,
    StepDecay,
    Warmup,
    build_schedule,
    registered,
)


def rates(group, **spec):
    return [step.lr[group] for step in build_schedule(spec).plan()]


def test_warmup_factors_ramp_linearly_then_follow_the_decay():
    warm = Warmup(2, StepDecay("half"))
    assert [warm.factor(i, 6) for i in range(6)] == pytest.approx([1 / 3, 2 / 3, 1, 0.1, 0.1, 0.1])
    assert [Warmup(1).factor(i, 3) for i in range(3)] == [0.5, 1.0, 1.0]
    cosine = CosineDecay()
    assert [Warmup(1, cosine).factor(i, 4) for i in range(4)] == pytest.approx(
        [0.5 * cosine.factor(0, 4), *(cosine.factor(i, 4) for i in (1, 2, 3))]
    )
    assert Warmup(3).decay == ConstantDecay()


def test_rollback_rewarms_every_period_values_before_at_and_after_each_boundary():
    spec = {"name": "incremental_rollback", "period_epochs": 4, "periods": 3, "decay_every": 3}
    plain = build_schedule(spec).plan()
    warm = build_schedule({**spec, "lr_warmup_epochs": 2}).plan()
    # B5 is rolled back at every boundary: 0.01 then x0.1 after 3 epochs of a period.
    one_period = [0.01 / 3, 0.02 / 3, 0.01, 0.001]
    assert [s.lr["B5"] for s in warm] == pytest.approx(one_period * 3, rel=1e-12)
    # B1 is retained from period 2 on: its lower restart rate is warmed the same way.
    assert [s.lr["B1"] for s in warm[4:8]] == pytest.approx([0.001 / 3, 0.002 / 3, 0.001, 0.0001])
    assert [s.lr["head"] for s in warm[:5]] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1, 0.01, 0.01 / 3])
    for before, after in zip(plain, warm, strict=True):  # only the rates change, not the boundaries
        assert (after.epoch, after.period, after.resets, after.frozen) == (
            before.epoch,
            before.period,
            before.resets,
            before.frozen,
        )
        assert after.reset_optimizer == before.reset_optimizer
        if before.epoch_in_period > 2:
            assert after.lr == before.lr


def test_zero_is_off_and_frozen_groups_stay_at_zero():
    spec = {"name": "fc_warmup", "warmup_epochs": 2, "epochs": 3}
    assert build_schedule({**spec, "lr_warmup_epochs": 0}).plan() == build_schedule(spec).plan()
    warm = build_schedule({**spec, "lr_warmup_epochs": 1}).plan()
    assert [s.lr["B3"] for s in warm] == pytest.approx([0, 0, 0.005, 0.01, 0.01])
    assert [s.lr["head"] for s in warm] == pytest.approx([0.05, 0.1, 0.05, 0.1, 0.1])


@pytest.mark.parametrize("name", sorted(registered()))
def test_every_registered_schedule_takes_a_warmup(name):
    plain = build_schedule({"name": name}).plan()
    schedule = build_schedule({"name": name, "lr_warmup_epochs": 1})
    assert schedule.params()["lr_warmup_epochs"] == 1 and list(schedule.params())[-1] == "lr_warmup_epochs"
    for before, after in zip(plain, schedule.plan(), strict=True):
        half = 0.5 if after.first_in_period else 1.0
        assert after.lr == {g: pytest.approx(before.lr[g] * half, rel=1e-12) for g in GROUPS}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "finetune", "epochs": 2, "lr_warmup_epochs": 2}, "period 1 has 2 epochs"),
        ({"name": "lp_ft", "probe_epochs": 1, "lr_warmup_epochs": 1}, "period 1 has 1 epochs"),
        ({"name": "finetune", "lr_warmup_epochs": -1}, "whole number >= 0, got -1"),
        ({"name": "finetune", "lr_warmup_epochs": 1.5}, "schedule.lr_warmup_epochs must be an integer"),
    ],
)
def test_bad_warmups_fail_at_construction_naming_the_value(spec, message):

    with pytest.raises(ScheduleError, match=message):
        build_schedule(spec)


def test_the_warmup_is_not_a_parameter_of_fc_warmup_s_head_only_period():
    schedule = build_schedule({"name": "fc_warmup", "warmup_epochs": 3, "epochs": 4})
    assert schedule.lr_warmup_epochs == 0 and schedule.warmup_epochs == 3
    assert all(s.lr[b] == 0 for s in schedule.plan()[:3] for b in BLOCKS)
