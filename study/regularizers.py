"""Regularizers of the run, not of the schedule: an L2-SP pull toward the pre-trained weights and an
exponential moving average (EMA) of the weights, evaluated instead of the raw ones.

Both work with any schedule and ride on the optimizer's step hooks, so the epoch loop does not
change: L2-SP adds its gradient just before each step, after the gradient norms are measured (like
SGD's weight decay, it is not in ``grad_norm_*``); the EMA is updated just after each step.

- **L2-SP** (Li et al., ICML 2018): α/2 · Σ_blocks ‖θ − θ⁰‖² over the parameters of B1..B5, θ⁰
  their pre-trained values (the snapshot the trainer restores at rollbacks, so a rolled-back block
  restarts exactly at its anchor, with no pull). The head is left out: it has no pre-trained
  weights to be pulled toward (the paper decays new layers toward 0; ``train.weight_decay`` still
  does that for every group). A block re-initialised at random (``RANDOM``, ``shrink_perturb``) is
  still pulled toward its pre-trained weights: that is what L2-SP means, and the reason to combine
  the two is to study exactly that tension.
- **EMA**: every parameter and floating-point BatchNorm buffer as e ← d·e + (1 − d)·θ after every
  optimizer step (integer buffers such as ``num_batches_tracked`` are copied). Validation, the
  period-end checkpoints' ``ema`` entry and ``study.evaluate`` use these weights. At a boundary the
  EMA of every reset group restarts from the group's new weights (a rolled-back block's from its
  pre-trained ones): averaging the weights a block had before its rollback with those after it
  would evaluate a block that never existed. Kept blocks and the head keep their average.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from schedules import BLOCKS
from study.config import TrainConfig
from study.models import group_state


class L2SP:
    """The gradient α(θ − θ⁰) of α/2 · Σ_blocks ‖θ − θ⁰‖², θ⁰ the blocks' pre-trained weights.

    Built as ``L2SP(model, snapshot(model), alpha=0.01)``; ``add_gradient()`` goes between
    ``loss.backward()`` and ``optimizer.step()``.
    """

    def __init__(self, model: nn.Module, initial: dict[str, torch.Tensor], alpha: float):
        self.alpha = alpha
        self.params: list[nn.Parameter] = []
        self.anchors: list[torch.Tensor] = []
        for block in BLOCKS:
            start = group_state(initial, block)
            for name, param in model.blocks[block].named_parameters():
                # on the parameter's device and in its memory format (channels_last)
                self.params.append(param)
                self.anchors.append(torch.empty_like(param).copy_(start[name]))

    @torch.no_grad()
    def add_gradient(self) -> None:
        """grad += α(θ − θ⁰) for every block parameter that has a gradient (frozen ones have none)."""
        pairs = [(p, a) for p, a in zip(self.params, self.anchors, strict=True) if p.grad is not None]
        if not pairs or self.alpha == 0:
            return
        params, anchors = zip(*pairs, strict=True)
        torch._foreach_add_([p.grad for p in params], torch._foreach_sub(params, anchors), alpha=self.alpha)

    def penalty(self) -> torch.Tensor:
        """α/2 · Σ ‖θ − θ⁰‖² (differentiable; the trainer adds the gradient directly instead)."""
        squares = [(p - a).pow(2).sum() for p, a in zip(self.params, self.anchors, strict=True)]
        return self.alpha / 2 * torch.stack(squares).sum()


class WeightEma:
    """An exponential moving average of a model's parameters and BatchNorm buffers, as a model.

    ``model`` (a copy, in eval mode, no gradients) is what validation evaluates.

    Built as ``WeightEma(model, decay=0.999)``; ``update()`` follows every ``optimizer.step()``.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        # state_dict() tensors share storage with the modules' own, which are updated in place only
        # (rollbacks copy_ into them, resume loads into them), so the pairs stay valid for the run.
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values(), strict=True))
        self._floats = [(e, t) for e, t in pairs if e.is_floating_point()]
        self._others = [(e, t) for e, t in pairs if not e.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """e ← d·e + (1 − d)·θ for float tensors, e ← θ for integer ones, θ of the model it copied."""
        averages = [e for e, _ in self._floats]
        torch._foreach_mul_(averages, self.decay)
        torch._foreach_add_(averages, [t for _, t in self._floats], alpha=1 - self.decay)
        for average, value in self._others:
            average.copy_(value)

    @torch.no_grad()
    def restart(self, model: nn.Module, groups: Iterable[str]) -> None:
        """The average of each named group restarts from the group's current weights."""
        own = self.model.groups()
        for name, module in model.groups().items():
            if name in groups:
                for average, value in zip(
                    own[name].state_dict().values(), module.state_dict().values(), strict=True
                ):
                    average.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


@dataclass
class Regularizers:
    """What the trainer calls: attach to each new optimizer, restart at boundaries, evaluate, save."""

    l2sp: L2SP | None = None
    ema: WeightEma | None = None

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Hook L2-SP's gradient in before and the EMA update after every ``optimizer.step()``."""
        if self.l2sp is not None:
            optimizer.register_step_pre_hook(lambda *_: self.l2sp.add_gradient())
        if self.ema is not None:
            optimizer.register_step_post_hook(lambda *_: self.ema.update())

    def restart(self, model: nn.Module, groups: Iterable[str]) -> None:
        """After a boundary's resets: the EMA of the reset groups starts again from their weights."""
        if self.ema is not None:
            self.ema.restart(model, groups)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The model validation measures: the EMA when there is one."""
        return model if self.ema is None else self.ema.model

    def state(self) -> dict[str, Any]:
        """Checkpoint entries: ``ema`` (the averaged state_dict) when there is an EMA."""
        return {} if self.ema is None else {"ema": self.ema.state_dict()}

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Resume from a checkpoint written with ``state()``'s entries."""
        if self.ema is not None:
            self.ema.load_state_dict(checkpoint["ema"])


def make_regularizers(model: nn.Module, initial: dict[str, torch.Tensor], train: TrainConfig) -> Regularizers:
    """The configured regularizers (``train.l2sp_alpha``, ``train.ema_decay``; 0 turns each off).

    Build them once the model is on its device and in its memory format.
    """
    return Regularizers(
        l2sp=L2SP(model, initial, train.l2sp_alpha) if train.l2sp_alpha > 0 else None,
        ema=WeightEma(model, train.ema_decay) if train.ema_decay > 0 else None,
    )
