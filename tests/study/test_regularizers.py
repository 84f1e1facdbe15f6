"""L2-SP and the weight EMA: exact values on a toy network, then what the trainer does with them."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import study.trainer as trainer
from schedules import BLOCKS
from study.config import ModelConfig, TrainConfig
from study.errors import UserError
from study.models import ReIDNet, group_state, snapshot
from study.regularizers import L2SP, Regularizers, WeightEma, make_regularizers


def toy_model(seed: int = 0) -> ReIDNet:
    """A real ReIDNet whose five blocks are a 1x1 convolution and a BatchNorm each."""
    torch.manual_seed(seed)
    blocks = {b: nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)) for b in BLOCKS}
    return ReIDNet(blocks, 3, 4, ModelConfig(head_dim=4, dropout=0.0))


def moved(model: nn.Module) -> None:
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param))


def test_l2sp_adds_alpha_times_the_distance_from_the_pretrained_blocks_and_leaves_the_head():
    model = toy_model()
    initial = snapshot(model)
    moved(model)
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.grad = grads[name].clone()
    model.blocks["B1"][0].bias.grad = None  # a parameter without a gradient (frozen) gets none
    L2SP(model, initial, alpha=0.3).add_gradient()
    for name, param in model.named_parameters():
        if name == "blocks.B1.0.bias":
            assert param.grad is None
        elif name.startswith("head."):
            assert torch.equal(param.grad, grads[name])
        else:
            expected = grads[name] + 0.3 * (param.detach() - initial[name])
            assert torch.allclose(param.grad, expected, rtol=0, atol=1e-6), name
            assert not torch.equal(param.grad, grads[name])


def test_l2sp_gradient_is_the_gradient_of_its_penalty():
    model = toy_model()
    initial = snapshot(model)
    moved(model)
    l2sp = L2SP(model, initial, alpha=0.5)
    block_params = {n: p for n, p in model.named_parameters() if n.startswith("blocks.")}
    expected = 0.25 * sum(((p.detach() - initial[n]) ** 2).sum() for n, p in block_params.items())
    penalty = l2sp.penalty()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    penalty.backward()
    autograd = {n: p.grad.clone() for n, p in block_params.items()}
    assert all(p.grad is None for p in model.head.parameters())
    for param in block_params.values():
        param.grad = torch.zeros_like(param)
    l2sp.add_gradient()
    for name, param in block_params.items():
        assert torch.allclose(param.grad, autograd[name], rtol=0, atol=1e-6), name


def test_alpha_zero_and_the_defaults_change_nothing():
    model = toy_model()
    initial = snapshot(model)
    moved(model)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    before = [p.grad.clone() for p in model.parameters()]
    L2SP(model, initial, alpha=0.0).add_gradient()
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))

    regularizers = make_regularizers(model, initial, TrainConfig())
    assert regularizers == Regularizers(l2sp=None, ema=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    regularizers.attach(optimizer)
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks
    assert regularizers.evaluated(model) is model and regularizers.state() == {}


def test_ema_after_k_steps_is_the_hand_computed_average_of_weights_and_batchnorm_statistics():
    model = toy_model()
    regularizers = Regularizers(ema=WeightEma(model, decay=0.8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    regularizers.attach(optimizer)
    expected = {k: v.double().clone() for k, v in model.state_dict().items()}
    start = snapshot(model)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        images = torch.randn(6, 3, 5, 5, generator=generator)
        loss = F.cross_entropy(model(images), torch.arange(6) % 4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()  # the EMA updates right after it
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = 0.8 * expected[key] + 0.2 * value.double()
            else:
                expected[key] = value.clone()
    ema = regularizers.evaluated(model).state_dict()
    assert regularizers.evaluated(model) is not model and not regularizers.evaluated(model).training
    moved = 0
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(ema[key].double(), expected[key], rtol=0, atol=1e-6), key
            # A conv bias before a BatchNorm gets no gradient, only float noise (threads change it).
            if (value.double() - start[key].double()).abs().max() > 1e-4:
                moved += 1
                assert not torch.equal(ema[key], value), key  # an average, not the raw weights
        else:
            assert torch.equal(ema[key], value) and value.item() == 4  # num_batches_tracked
    assert moved >= 4, "the weights must move for the average to be tested"
    assert any("running_var" in k for k in ema)
    assert regularizers.state().keys() == {"ema"}


def test_ema_restart_copies_the_reset_groups_only():
    model = toy_model()
    ema = WeightEma(model, decay=0.9)
    moved(model)
    ema.restart(model, {"B5": None, "head": None})
    for group in ("B5", "head"):
        assert all(
            torch.equal(a, b)
            for a, b in zip(
                group_state(ema.state_dict(), group).values(),
                group_state(model.state_dict(), group).values(),
                strict=True,
            )
        )
    assert not torch.equal(ema.model.blocks["B4"][0].weight, model.blocks["B4"][0].weight)


@pytest.mark.parametrize(
    "train, message",
    [
        ({"ema_decay": 1.0}, r"train.ema_decay must be in \[0, 1\) \(0: off\), got 1.0"),
        ({"ema_decay": -0.5}, r"train.ema_decay must be in \[0, 1\)"),
        ({"l2sp_alpha": -1}, r"train.l2sp_alpha must be >= 0 \(0: off\), got -1.0"),
    ],
)
def test_bad_values_are_one_line_user_errors(tiny_config, train, message):
    with pytest.raises(UserError, match=message):
        tiny_config({"name": "finetune", "epochs": 1}, train=train)


# ----------------------------------------------------------------------------- in the trainer


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as file:
        return list(csv.DictReader(file))


def test_l2sp_keeps_every_block_closer_to_its_pretrained_weights(tiny_config, tmp_path):
    schedule = {"name": "finetune", "epochs": 1}
    trainer.train_run(tiny_config(schedule), tmp_path / "plain")
    trainer.train_run(tiny_config(schedule, train={"l2sp_alpha": 20.0}), tmp_path / "l2sp")
    (plain,), (pulled,) = _rows(tmp_path / "plain"), _rows(tmp_path / "l2sp")
    for block in BLOCKS:
        assert 0 < float(pulled[f"drift_{block}"]) < 0.9 * float(plain[f"drift_{block}"]), block


def test_validation_evaluates_the_ema_which_restarts_with_the_rolled_back_blocks(
    tiny_config, tmp_path, monkeypatch
):
    evaluated, restarts = [], []
    real_evaluate, real_restart = trainer.evaluate_model, WeightEma.restart

    def evaluate_model(model, data, config, device):
        evaluated.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_evaluate(model, data, config, device)

    def restart(self, model, groups):
        real_restart(self, model, groups)
        restarts.append((set(groups), {k: v.clone() for k, v in self.state_dict().items()}))

    monkeypatch.setattr(trainer, "evaluate_model", evaluate_model)
    monkeypatch.setattr(WeightEma, "restart", restart)
    spy_initial = {}
    real_snapshot = trainer.snapshot
    monkeypatch.setattr(trainer, "snapshot", lambda m: spy_initial.setdefault("s", real_snapshot(m)))
    config = tiny_config(
        {"name": "incremental_rollback", "period_epochs": 1, "periods": 2}, train={"ema_decay": 0.9}
    )
    trainer.train_run(config, tmp_path / "run")
    checkpoints = [torch.load(tmp_path / "run" / "checkpoints" / f"epoch-000{e}.pt") for e in (1, 2)]
    assert len(evaluated) == 2
    for state, checkpoint in zip(evaluated, checkpoints, strict=True):
        assert all(torch.equal(state[k], checkpoint["ema"][k]) for k in state)
        assert not all(torch.equal(state[k], checkpoint["model"][k]) for k in state)
    # epoch 1 has no resets; at period 2's start B2..B5 roll back and their EMA restarts from them
    assert [groups for groups, _ in restarts] == [set(), set(BLOCKS[1:])]
    after_rollback = restarts[1][1]
    initial = spy_initial["s"]
    for block in BLOCKS[1:]:
        assert all(
            torch.equal(v, initial[f"blocks.{block}.{k}"])
            for k, v in group_state(after_rollback, block).items()
        )
    kept = group_state(after_rollback, "B1")
    assert all(torch.equal(v, group_state(checkpoints[0]["ema"], "B1")[k]) for k, v in kept.items())


@pytest.mark.slow
def test_resume_continues_the_ema_and_l2sp_bit_exactly(tiny_config, tmp_path, train_until):
    from study.evaluate.checkpoint import load_checkpoint

    config = tiny_config(
        {"name": "incremental_rollback", "period_epochs": 2, "periods": 2},
        train={"checkpoint_every": 1, "ema_decay": 0.9, "l2sp_alpha": 1.0},
    )
    trainer.train_run(config, tmp_path / "straight")

    train_until(config, tmp_path / "resumed", 3)
    trainer.train_run(config, tmp_path / "resumed", resume=True)
    a, b = (torch.load(tmp_path / run / "checkpoints" / "epoch-0004.pt") for run in ("straight", "resumed"))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    straight, resumed = _rows(tmp_path / "straight"), _rows(tmp_path / "resumed")
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    assert [r["val_mAP"] for r in straight] == [r["val_mAP"] for r in resumed]
    # study.evaluate measures what validation measured: the EMA weights
    _, state = load_checkpoint(tmp_path / "straight" / "checkpoints" / "epoch-0004.pt")
    assert all(torch.equal(state[k], a["ema"][k]) for k in state)
