"""The schedules of the paper: its baselines, its rollback schedule and its Table 1 ablation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from schedules.core import (
    BLOCKS,
    PRETRAINED,
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


@register("finetune")
@dataclass(frozen=True)
class Finetune(Schedule):
    """Ordinary fine-tuning: one period with StepLR inside it (the paper's baseline)."""

    epochs: int = 40
    lr: float = 0.01
    head_lr: float = 0.1
    decay_every: int | Literal["half"] = 20  # epochs, or "half" of each period
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(epochs=self.epochs, lr=self.lr, head_lr=self.head_lr)
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        return [Period(self.epochs, uniform_lr(self.lr, self.head_lr), decay=decay)]


@dataclass(frozen=True)
class RollbackSchedule(Schedule):
    """Shared parameters and period rule of the rollback family.

    Period p keeps its ``retained`` blocks and the head and restores every other
    block to pre-trained (parameters and BatchNorm statistics). Retained blocks
    restart at ``retained_lr``, rolled-back ones at ``lr``, the head at ``head_lr``
    in period 1 and ``head_lr_later`` afterwards; a new optimizer every period.
    """

    period_epochs: int = 40
    lr: float = 0.01
    retained_lr: float = 0.001
    head_lr: float = 0.1
    head_lr_later: float = 0.01
    decay_every: int | Literal["half"] = 20  # epochs, or "half" of each period
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(
            period_epochs=self.period_epochs,
            lr=self.lr,
            retained_lr=self.retained_lr,
            head_lr=self.head_lr,
            head_lr_later=self.head_lr_later,
        )
        require_decay_every(self.decay_every)

    def retained_per_period(self) -> list[tuple[str, ...]]:
        raise NotImplementedError

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        periods = []
        for index, kept in enumerate(self.retained_per_period()):
            rates = {block: self.retained_lr if block in kept else self.lr for block in BLOCKS}
            rates["head"] = self.head_lr if index == 0 else self.head_lr_later
            resets = {block: PRETRAINED for block in BLOCKS if block not in kept} if index > 0 else {}
            periods.append(Period(self.period_epochs, rates, resets, decay=decay))
        return periods


@register("incremental_rollback")
@dataclass(frozen=True)
class IncrementalRollback(RollbackSchedule):
    """The paper's schedule: period p keeps B1..B(p-1) and the head and rolls the rest back.

    ``budget_epochs`` (0: unset) fixes the budget instead of ``periods``: ``budget_epochs /
    period_epochs`` periods, so a study can tune the period length at one budget (120 with
    period_epochs 60, 40 or 30 gives 2, 3 or 4 periods).
    """

    periods: int = 4
    budget_epochs: int = 0

    def validate(self) -> None:
        super().validate()
        if self.budget_epochs:
            require_positive(budget_epochs=self.budget_epochs)
            if self.budget_epochs % self.period_epochs:
                raise ScheduleError(
                    f"budget_epochs={self.budget_epochs} is not a whole number of periods of "
                    f"period_epochs={self.period_epochs}; choose period_epochs that divide it"
                )
        count = self.period_count
        if isinstance(count, bool) or not 1 <= count <= len(BLOCKS) + 1:
            where = f"budget_epochs / period_epochs = {count}" if self.budget_epochs else f"periods={count!r}"
            raise ScheduleError(f"incremental_rollback needs 1 <= periods <= 6, got {where}")

    @property
    def period_count(self) -> int:
        return self.budget_epochs // self.period_epochs if self.budget_epochs else self.periods

    def retained_per_period(self) -> list[tuple[str, ...]]:
        return [BLOCKS[:p] for p in range(self.period_count)]


@register("base_cy")
@dataclass(frozen=True)
class BaseCy(IncrementalRollback):
    """The paper's base_cy: incremental_rollback's learning-rate restarts without restoring any weights."""

    def build(self) -> list[Period]:
        return [dataclasses.replace(period, resets={}) for period in super().build()]


@register("block_order")
@dataclass(frozen=True)
class BlockOrder(RollbackSchedule):
    """Any order: ``retained[p]`` lists the blocks kept at the start of period p+1.

    ``retained: [[], [B3]]`` is the paper's Table 1 "Block3" ablation.
    """

    retained: list[list[str]] = field(default_factory=lambda: [[], ["B1"], ["B1", "B2"], ["B1", "B2", "B3"]])

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.retained, list | tuple) or not self.retained:
            raise ScheduleError(
                f"block_order needs a non-empty list of retained lists, got {self.retained!r}"
            )
        for index, kept in enumerate(self.retained):
            check_blocks(kept, f"retained[{index}]")
        if self.retained[0]:
            raise ScheduleError(
                f"retained[0] must be [] (nothing is trained before period 1), got {list(self.retained[0])}"
            )

    def retained_per_period(self) -> list[tuple[str, ...]]:
        return [tuple(kept) for kept in self.retained]


@register("fc_warmup")
@dataclass(frozen=True)
class FcWarmup(Schedule):
    """FC warm-up: the backbone frozen for ``warmup_epochs`` while the head trains, then fine-tuning."""

    warmup_epochs: int = 20
    epochs: int = 40
    lr: float = 0.01
    head_lr: float = 0.1
    warmup_head_lr: float = 0.1
    decay_every: int | Literal["half"] = 20  # epochs, or "half" of each period
    gamma: float = 0.1

    def validate(self) -> None:
        require_positive(
            warmup_epochs=self.warmup_epochs,
            epochs=self.epochs,
            lr=self.lr,
            head_lr=self.head_lr,
            warmup_head_lr=self.warmup_head_lr,
        )
        require_decay_every(self.decay_every)

    def build(self) -> list[Period]:
        decay = StepDecay(self.decay_every, self.gamma)
        warmup = Period(
            self.warmup_epochs,
            uniform_lr(self.lr, self.warmup_head_lr),
            frozen=frozenset(BLOCKS),
            decay=decay,
        )
        return [warmup, Period(self.epochs, uniform_lr(self.lr, self.head_lr), decay=decay)]
