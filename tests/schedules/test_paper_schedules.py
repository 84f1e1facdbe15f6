"""The paper's schedules, checked epoch by epoch against PAPER_NOTES.md."""

import pytest

from schedules import BLOCKS, GROUPS, ScheduleError, build_schedule

# PAPER_NOTES.md: learning rates at the start of each period (official code).
OFFICIAL_TABLE = {
    1: {"B1": 0.01, "B2": 0.01, "B3": 0.01, "B4": 0.01, "B5": 0.01, "head": 0.1},
    2: {"B1": 0.001, "B2": 0.01, "B3": 0.01, "B4": 0.01, "B5": 0.01, "head": 0.01},
    3: {"B1": 0.001, "B2": 0.001, "B3": 0.01, "B4": 0.01, "B5": 0.01, "head": 0.01},
    4: {"B1": 0.001, "B2": 0.001, "B3": 0.001, "B4": 0.01, "B5": 0.01, "head": 0.01},
}


def test_incremental_rollback_default_is_the_official_table_epoch_by_epoch():
    plan = build_schedule({"name": "incremental_rollback"}).plan()
    assert len(plan) == 160
    for step in plan:
        period = (step.epoch - 1) // 40 + 1
        inside = (step.epoch - 1) % 40  # StepLR(20, 0.1) inside each 40-epoch period
        factor = 1.0 if inside < 20 else 0.1
        assert (step.period, step.epoch_in_period) == (period, inside + 1)
        for group in GROUPS:
            assert step.lr[group] == pytest.approx(OFFICIAL_TABLE[period][group] * factor, rel=1e-12)
        assert step.frozen == frozenset()
        if inside == 0 and period > 1:
            rolled_back = set(BLOCKS[period - 1 :])
            assert set(step.resets) == rolled_back, f"epoch {step.epoch}"
            assert all(r.kind == "pretrained" for r in step.resets.values())
            assert "head" not in step.resets
        else:
            assert step.resets == {}
        assert step.reset_optimizer == (inside == 0)
        assert step.last_in_period == (inside == 39)


@pytest.mark.parametrize("epoch, expected", [(19, 0.01), (20, 0.01), (21, 0.001), (40, 0.001), (41, 0.01)])
def test_step_decay_values_around_the_boundaries(epoch, expected):
    plan = build_schedule({"name": "incremental_rollback"}).plan()
    assert plan[epoch - 1].lr["B5"] == pytest.approx(expected)


@pytest.mark.parametrize(("period_epochs", "high_epochs"), [(40, 20), (3, 2), (2, 1), (1, 1)])
def test_half_decay_steps_half_way_through_each_period(period_epochs, high_epochs):
    half = build_schedule(
        {"name": "incremental_rollback", "period_epochs": period_epochs, "decay_every": "half"}
    )
    rates = [epoch.lr["B5"] for epoch in half.plan()]
    one_period = [0.01] * high_epochs + [pytest.approx(0.001)] * (period_epochs - high_epochs)
    assert rates == one_period * 4
    if period_epochs == 40:  # the paper's StepLR(20)
        assert rates == [epoch.lr["B5"] for epoch in build_schedule({"name": "incremental_rollback"}).plan()]


@pytest.mark.parametrize("value", ["halve", 0, 2.5])
def test_decay_every_is_whole_epochs_or_half(value):
    with pytest.raises(ScheduleError, match="decay_every"):
        build_schedule({"name": "finetune", "epochs": 4, "decay_every": value}).plan()


def test_incremental_rollback_parameters_change_the_plan():
    schedule = build_schedule(
        {
            "name": "incremental_rollback",
            "period_epochs": 3,
            "periods": 2,
            "retained_lr": 0.005,
            "lr": 0.02,
            "head_lr": 0.2,
            "head_lr_later": 0.03,
            "decay_every": 2,
            "gamma": 0.5,
        }
    )
    plan = schedule.plan()
    assert [s.period for s in plan] == [1, 1, 1, 2, 2, 2]
    assert [s.lr["B2"] for s in plan] == pytest.approx([0.02, 0.02, 0.01, 0.02, 0.02, 0.01])
    assert [s.lr["B1"] for s in plan] == pytest.approx([0.02, 0.02, 0.01, 0.005, 0.005, 0.0025])
    assert [s.lr["head"] for s in plan] == pytest.approx([0.2, 0.2, 0.1, 0.03, 0.03, 0.015])


def test_base_cy_restarts_the_same_rates_without_restoring_weights():
    rollback = build_schedule({"name": "incremental_rollback", "period_epochs": 4}).plan()
    base_cy = build_schedule({"name": "base_cy", "period_epochs": 4}).plan()
    assert [s.lr for s in base_cy] == [s.lr for s in rollback]
    assert all(s.resets == {} for s in base_cy)
    assert [s.reset_optimizer for s in base_cy] == [s.reset_optimizer for s in rollback]


def test_finetune_is_one_period():
    plan = build_schedule({"name": "finetune", "epochs": 25}).plan()
    assert {s.period for s in plan} == {1}
    assert plan[0].lr == {**dict.fromkeys(BLOCKS, 0.01), "head": 0.1}
    assert plan[20].lr["B1"] == pytest.approx(0.001)
    assert all(s.resets == {} for s in plan)


def test_fc_warmup_freezes_the_backbone_then_fine_tunes():
    plan = build_schedule({"name": "fc_warmup", "warmup_epochs": 2, "epochs": 3}).plan()
    assert len(plan) == 5
    for step in plan[:2]:
        assert step.frozen == frozenset(BLOCKS)
        assert all(step.lr[b] == 0.0 for b in BLOCKS)
        assert step.lr["head"] == pytest.approx(0.1)
    for step in plan[2:]:
        assert step.frozen == frozenset()
        assert step.lr == {**dict.fromkeys(BLOCKS, 0.01), "head": 0.1}
    assert plan[2].reset_optimizer and not plan[3].reset_optimizer


def test_block_order_reproduces_the_table_1_block3_ablation():
    plan = build_schedule({"name": "block_order", "retained": [[], ["B3"]], "period_epochs": 2}).plan()
    boundary = plan[2]
    assert boundary.period == 2
    assert set(boundary.resets) == {"B1", "B2", "B4", "B5"}
    assert boundary.lr["B3"] == pytest.approx(0.001)
    assert boundary.lr["B1"] == pytest.approx(0.01)


def test_block_order_custom_order():
    plan = build_schedule(
        {"name": "block_order", "retained": [[], ["B2"], ["B2", "B1"]], "period_epochs": 1}
    ).plan()
    assert [set(s.resets) for s in plan] == [set(), {"B1", "B3", "B4", "B5"}, {"B3", "B4", "B5"}]


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"name": "block_order", "retained": [[], ["B7"]]}, "unknown block 'B7'"),
        ({"name": "block_order", "retained": [["B1"]]}, "retained[0] must be []"),
        ({"name": "block_order", "retained": [[], ["B1", "B1"]]}, "names a block twice"),
        (
            {"name": "incremental_rollback", "period_epochs": 0},
            "requires positive period_epochs, got period_epochs=0",
        ),
        ({"name": "incremental_rollback", "lr": -0.1}, "requires positive lr"),
        ({"name": "incremental_rollback", "periods": 7}, "1 <= periods <= 6"),
        ({"name": "finetune", "epochs": 2.5}, "schedule.epochs must be an integer"),
        ({"name": "fc_warmup", "warmup_epochs": 0}, "requires positive warmup_epochs"),
    ],
)
def test_bad_parameters_fail_at_construction_naming_the_value(spec, message):

    with pytest.raises(ScheduleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_schedule(spec)


def test_a_budget_of_epochs_gives_the_periods_that_fill_it():
    for period_epochs, periods in ((30, 4), (40, 3), (60, 2)):
        schedule = build_schedule(
            {"name": "incremental_rollback", "budget_epochs": 120, "period_epochs": period_epochs}
        )
        plan = schedule.plan()
        assert len(plan) == 120 and plan[-1].period == periods
    base_cy = build_schedule({"name": "base_cy", "budget_epochs": 120, "period_epochs": 60, "periods": 4})
    assert base_cy.plan()[-1].period == 2  # the budget decides, not periods


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"budget_epochs": 100, "period_epochs": 30}, "budget_epochs=100 is not a whole number of periods"),
        (
            {"budget_epochs": 280, "period_epochs": 40},
            "needs 1 <= periods <= 6, got budget_epochs / period_epochs = 7",
        ),
        ({"periods": 7}, "needs 1 <= periods <= 6, got periods=7"),
    ],
)
def test_a_budget_that_periods_cannot_fill_is_refused(settings, message):
    with pytest.raises(ScheduleError, match=message.replace("(", r"\(")):
        build_schedule({"name": "incremental_rollback", **settings})
