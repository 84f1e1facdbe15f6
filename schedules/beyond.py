"""Schedules beyond the paper, so the study can compare rollback with other resets and restarts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from schedules.core import (
    BLOCKS,
    RANDOM,
    CosineDecay,
    Period,
    Plateau,
    Schedule,
    ScheduleError,
    StepDecay,
    check_blocks,
    require_decay_every,
    require_positive,
    shrink_perturb,
    uniform_lr,
)
from schedules.paper import IncrementalRollback, RollbackSchedule
from schedules.registry import register


def _check_periods(periods: object) -> None:
    if isinstance(periods, bool) or not isinstance(periods, int) or periods <= 0:
        raise ScheduleError(f"requires positive periods, got periods={periods!r}")


@register("later_layer_forgetting")
@dataclass(frozen=True)
class LaterLayerForgetting(RollbackSchedule):
    """Re-initialise blocks from ``forget_from`` upward at random at every boundary (Zhou et al., 2022).

    Learning rates follow the rollback rule: kept blocks restart at ``retained_lr``,
    re-initialised ones at ``lr``.
    """

    periods: int = 4
    forget_from: str = "B5"

    def validate(self) -> None:
        super().validate()
        _check_periods(self.periods)
        check_blocks([self.forget_from], "forget_from")

    def retained_per_period(self) -> list[tuple[str, ...]]:
        kept = BLOCKS[: BLOCKS.index(self.forget_from)]
        return [()] + [kept] * (self.periods - 1)

    def build(self) -> list[Period]:
        periods = super().build()
        return [
            Period(
                p.epochs, p.lr, {block: RANDOM for block in p.resets}, p.frozen, p.decay, p.reset_optimizer
            )
            for p in periods
        ]


@register("shrink_perturb")
@dataclass(frozen=True)
class ShrinkPerturb(Schedule):
    """At every boundary θ ← shrink·θ + perturb·θ_random for ``blocks`` (Ash & Adams, 2020)."""

    periods: int = 4
    period_epochs: int = 40
    shrink: float = 0.9
    perturb: float = 0.1
    blocks: list[str] = field(default_factory=lambda: list(BLOCKS))
    lr: float = 0.01
    head_lr: float = 0.1
    head_lr_later: float = 0.01
    decay_every: int | Literal["half"] = 20  # epochs, or "half" of each period
    gamma: float = 0.1

    def validate(self) -> None:
        _check_periods(self.periods)
        require_positive(period_epochs=self.period_epochs, lr=self.lr, head_lr=self.head_lr)
        require_positive(head_lr_later=self.head_lr_later)
        require_decay_every(self.decay_every)
        check_blocks(self.blocks, "blocks")
        shrink_perturb(self.shrink, self.perturb)

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        reset = shrink_perturb(self.shrink, self.perturb)
        periods = [Period(self.period_epochs, uniform_lr(self.lr, self.head_lr), decay=decay)]
        for _ in range(self.periods - 1):
            rates = uniform_lr(self.lr, self.head_lr_later)
            periods.append(Period(self.period_epochs, rates, {b: reset for b in self.blocks}, decay=decay))
        return periods


@register("cosine_restarts")
@dataclass(frozen=True)
class CosineRestarts(Schedule):
    """SGDR: a half-cosine learning rate restarted every period, weights and momentum kept.

    Period i lasts ``period_epochs * period_mult**i`` epochs.
    """

    periods: int = 4
    period_epochs: int = 40
    period_mult: int = 1
    lr: float = 0.01
    head_lr: float = 0.1
    floor: float = 0.0

    def validate(self) -> None:
        _check_periods(self.periods)
        require_positive(period_epochs=self.period_epochs, period_mult=self.period_mult)
        require_positive(lr=self.lr, head_lr=self.head_lr)
        CosineDecay(self.floor)

    def build(self) -> list[Period]:
        rates = uniform_lr(self.lr, self.head_lr)
        decay = CosineDecay(self.floor)
        return [
            Period(self.period_epochs * self.period_mult**i, rates, decay=decay, reset_optimizer=False)
            for i in range(self.periods)
        ]


@register("plateau_rollback")
@dataclass(frozen=True)
class PlateauRollback(IncrementalRollback):
    """The paper's rollback, each period ending when learning slows down ("perturbed when learning
    slows down"): once ``metric`` (the training ``loss`` or ``val_mAP``) has not improved by more
    than ``min_delta`` for ``patience`` epochs, or after ``period_epochs``, whichever comes first.

    The plan is the maximum one; after an early end the next period starts at once (the later
    periods shift earlier), and an early end of the last period ends the run. A period that may end
    on ``val_mAP`` is validated after every epoch.
    """

    patience: int = 5
    min_delta: float = 0.0
    metric: Literal["loss", "val_mAP"] = "loss"

    def validate(self) -> None:
        super().validate()
        Plateau(self.metric, self.patience, self.min_delta)
        if self.patience + 1 >= self.period_epochs:
            raise ScheduleError(
                f"patience={self.patience} never ends a period of period_epochs={self.period_epochs} early "
                "(the earliest end is after patience + 1 epochs); lower patience or raise period_epochs"
            )

    def build(self) -> list[Period]:
        until = Plateau(self.metric, self.patience, self.min_delta)
        return [dataclasses.replace(period, until=until) for period in super().build()]
