"""Fine-tuning schedules from the transfer-learning literature, to set rollback against.

Each one is its parameters plus the periods they make; the trainer executes them like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from schedules.core import (
    BLOCKS,
    RANDOM,
    ConstantDecay,
    Period,
    Schedule,
    ScheduleError,
    StepDecay,
    check_blocks,
    require_decay_every,
    require_positive,
    uniform_lr,
)
from schedules.registry import register


@register("lp_ft")
@dataclass(frozen=True)
class LinearProbeThenFinetune(Schedule):
    """LP-FT (Kumar et al., ICLR 2022): the head trains alone on frozen blocks, then everything
    fine-tunes at a lower learning rate, so a random head does not distort the pre-trained features.
    """

    probe_epochs: int = 20
    epochs: int = 40
    probe_head_lr: float = 0.1
    lr: float = 0.001
    head_lr: float = 0.01
    decay_every: int | Literal["half"] = "half"  # epochs, or "half" of each period
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(probe_epochs=self.probe_epochs, epochs=self.epochs, probe_head_lr=self.probe_head_lr)
        require_positive(lr=self.lr, head_lr=self.head_lr)
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        probe = Period(
            self.probe_epochs, uniform_lr(self.lr, self.probe_head_lr), frozen=frozenset(BLOCKS), decay=decay
        )
        return [probe, Period(self.epochs, uniform_lr(self.lr, self.head_lr), decay=decay)]


@register("layer_lr_decay")
@dataclass(frozen=True)
class LayerLrDecay(Schedule):
    """Discriminative (layer-wise) learning rates (ULMFiT; BEiT): block Bi trains at
    lr · layer_decay^(5 − i), so the low blocks move least; the head at ``head_lr``. One period.
    """

    epochs: int = 40
    lr: float = 0.01  # of B5
    layer_decay: float = 0.5
    head_lr: float = 0.1
    decay_every: int | Literal["half"] = "half"
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(epochs=self.epochs, lr=self.lr, head_lr=self.head_lr)
        if not 0 < self.layer_decay <= 1:
            raise ScheduleError(f"layer_decay must be in (0, 1], got layer_decay={self.layer_decay!r}")
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        top = len(BLOCKS) - 1
        rates = {block: self.lr * self.layer_decay ** (top - i) for i, block in enumerate(BLOCKS)}
        return [
            Period(
                self.epochs, {**rates, "head": self.head_lr}, decay=StepDecay(self.decay_every, self.gamma)
            )
        ]


@register("gradual_unfreeze")
@dataclass(frozen=True)
class GradualUnfreeze(Schedule):
    """ULMFiT's gradual unfreezing, top-down: the head and B5 train first, one more block joins every
    ``unfreeze_epochs`` (at a constant learning rate, momentum kept), and once nothing is frozen the
    whole network trains for ``epochs`` with the step decay.
    """

    unfreeze_epochs: int = 5
    epochs: int = 20
    lr: float = 0.01
    head_lr: float = 0.1
    decay_every: int | Literal["half"] = "half"
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(unfreeze_epochs=self.unfreeze_epochs, epochs=self.epochs)
        require_positive(lr=self.lr, head_lr=self.head_lr)
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        rates = uniform_lr(self.lr, self.head_lr)
        periods = [
            Period(
                self.unfreeze_epochs,
                rates,
                frozen=frozenset(BLOCKS[:frozen]),
                decay=ConstantDecay(),
                reset_optimizer=False,  # momentum kept (the first period starts the optimizer anyway)
            )
            for frozen in range(len(BLOCKS) - 1, 0, -1)  # B1..B4 frozen, then B1..B3, ..., then B1
        ]
        last = Period(
            self.epochs, rates, decay=StepDecay(self.decay_every, self.gamma), reset_optimizer=False
        )
        return [*periods, last]


@register("surgical")
@dataclass(frozen=True)
class Surgical(Schedule):
    """Surgical fine-tuning (Lee et al., ICLR 2023): only ``blocks`` and the head train; the other
    blocks stay frozen at their pre-trained weights (BatchNorm in eval mode). One period.
    """

    blocks: list[str] = field(default_factory=lambda: ["B1"])
    epochs: int = 40
    lr: float = 0.01
    head_lr: float = 0.1
    decay_every: int | Literal["half"] = "half"
    gamma: float = 0.1

    def validate(self) -> None:
        check_blocks(self.blocks, "blocks")
        if not self.blocks:
            raise ScheduleError("surgical needs at least one block to train, got blocks=[]")
        require_positive(epochs=self.epochs, lr=self.lr, head_lr=self.head_lr)
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        frozen = frozenset(b for b in BLOCKS if b not in self.blocks)
        decay = StepDecay(self.decay_every, self.gamma)
        return [Period(self.epochs, uniform_lr(self.lr, self.head_lr), frozen=frozen, decay=decay)]


@register("rifle")
@dataclass(frozen=True)
class Rifle(Schedule):
    """RIFLE (Li et al., ICML 2020): the head is re-initialised at random at the start of every period
    after the first, so its fresh gradients reach deep into the backbone, which keeps training.
    Every period restarts the learning rates and the optimizer.
    """

    periods: int = 4
    period_epochs: int = 40
    lr: float = 0.01
    head_lr: float = 0.1
    decay_every: int | Literal["half"] = "half"
    gamma: float = 0.1

    def validate(self) -> None:
        if isinstance(self.periods, bool) or not isinstance(self.periods, int) or self.periods < 1:
            raise ScheduleError(f"requires positive periods, got periods={self.periods!r}")
        require_positive(period_epochs=self.period_epochs, lr=self.lr, head_lr=self.head_lr)
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        rates = uniform_lr(self.lr, self.head_lr)
        return [
            Period(self.period_epochs, rates, {"head": RANDOM} if index else {}, decay=decay)
            for index in range(self.periods)
        ]
