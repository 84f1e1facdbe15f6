"""The literature's fine-tuning schedules: values exactly at, before and after every boundary."""

import pytest

from schedules import BLOCKS, GROUPS, ScheduleError, build_schedule


def plan(**spec):
    return build_schedule(spec).plan()


def test_lp_ft_probes_with_frozen_blocks_then_fine_tunes_everything_at_a_lower_rate():
    steps = plan(name="lp_ft", probe_epochs=2, epochs=4, probe_head_lr=0.1, lr=0.001, head_lr=0.01)
    assert len(steps) == 6
    probe, last_probe, first_ft = steps[0], steps[1], steps[2]
    assert probe.frozen == frozenset(BLOCKS) and last_probe.frozen == frozenset(BLOCKS)
    assert all(probe.lr[b] == 0 for b in BLOCKS) and probe.lr["head"] == pytest.approx(0.1)
    assert last_probe.lr["head"] == pytest.approx(0.01)  # "half": the step after epoch 1 of 2
    assert first_ft.frozen == frozenset() and first_ft.reset_optimizer and first_ft.first_in_period
    assert first_ft.lr == {**{b: pytest.approx(0.001) for b in BLOCKS}, "head": pytest.approx(0.01)}
    assert steps[4].lr["B1"] == pytest.approx(0.0001)  # fine-tuning's step half-way: epoch 3 of 4
    assert all(s.resets == {} for s in steps)


def test_layer_lr_decay_gives_each_block_lr_times_decay_to_its_depth_below_b5():
    (step, *_) = plan(name="layer_lr_decay", epochs=2, lr=0.04, layer_decay=0.5, head_lr=0.1)
    assert [step.lr[b] for b in BLOCKS] == pytest.approx([0.0025, 0.005, 0.01, 0.02, 0.04])
    assert step.lr["head"] == pytest.approx(0.1) and step.frozen == frozenset()
    with pytest.raises(ScheduleError, match="layer_decay must be in"):
        build_schedule({"name": "layer_lr_decay", "layer_decay": 1.5})


def test_gradual_unfreeze_adds_one_block_per_period_top_down_then_trains_all():
    steps = plan(name="gradual_unfreeze", unfreeze_epochs=2, epochs=4, lr=0.01, head_lr=0.1)
    assert len(steps) == 4 * 2 + 4
    frozen_by_period = [steps[i].frozen for i in range(0, 8, 2)]
    assert frozen_by_period == [frozenset(BLOCKS[:k]) for k in (4, 3, 2, 1)]
    assert steps[1].frozen == steps[0].frozen  # within a period nothing changes
    assert steps[0].lr["B5"] == pytest.approx(0.01) and steps[0].lr["B4"] == 0
    assert steps[2].lr["B4"] == pytest.approx(0.01) and steps[2].lr["B3"] == 0
    assert steps[1].lr["B5"] == pytest.approx(0.01)  # constant while unfreezing
    final = steps[8:]
    assert all(s.frozen == frozenset() for s in final)
    assert [s.lr["B1"] for s in final] == pytest.approx([0.01, 0.01, 0.001, 0.001])
    assert [s.reset_optimizer for s in steps] == [True] + [False] * 11  # momentum kept throughout


def test_surgical_trains_only_its_blocks_and_the_head():
    (step, *_) = plan(name="surgical", blocks=["B2", "B4"], epochs=2)
    assert step.frozen == frozenset({"B1", "B3", "B5"})
    assert [step.lr[g] for g in GROUPS] == pytest.approx([0, 0.01, 0, 0.01, 0, 0.1])
    with pytest.raises(ScheduleError, match="at least one block"):
        build_schedule({"name": "surgical", "blocks": []})
    with pytest.raises(ScheduleError, match="unknown block 'B7'"):
        build_schedule({"name": "surgical", "blocks": ["B7"]})


def test_rifle_reinitialises_the_head_at_random_at_every_later_period_start():
    steps = plan(name="rifle", periods=3, period_epochs=2, lr=0.01, head_lr=0.1)
    starts = [s for s in steps if s.first_in_period]
    assert [s.epoch for s in starts] == [1, 3, 5]
    assert starts[0].resets == {}
    for start in starts[1:]:
        assert set(start.resets) == {"head"} and start.resets["head"].kind == "random"
        assert start.reset_optimizer and start.lr["head"] == pytest.approx(0.1)  # restarted
    assert all(s.resets == {} for s in steps if not s.first_in_period)
    assert steps[1].lr["B3"] == pytest.approx(0.001) and steps[2].lr["B3"] == pytest.approx(0.01)
    assert all(s.frozen == frozenset() for s in steps)
