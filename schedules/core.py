"""The schedule model: periods with boundary actions and learning rates, expanded to a per-epoch plan.

A schedule never touches a model. It is data (its parameters) plus a pure
``build()`` method, which returns the periods; ``plan()`` turns the periods into one ``EpochPlan`` per
epoch, which is all the trainer reads.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

BLOCKS = ("B1", "B2", "B3", "B4", "B5")
GROUPS = (*BLOCKS, "head")


class ScheduleError(ValueError):
    """A schedule or period built with invalid values (the study's commands print it on one line, exit 2)."""


def closest(name: str, valid: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest valid name, or '' when nothing is close.

    >>> closest("perod_epochs", ["period_epochs", "lr"])
    " (did you mean 'period_epochs'?)"
    """
    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def require_positive(**values: float) -> None:
    """Refuse values that are not positive finite numbers (nan and inf included)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
            raise ScheduleError(f"requires positive {name}, got {name}={value!r}")


def require_decay_every(decay_every: int | str) -> None:
    """A StepDecay interval: a positive number of epochs, or "half" of each period."""
    if decay_every != "half":
        require_positive(decay_every=decay_every)


# ----------------------------------------------------------------------------- resets


@dataclass(frozen=True)
class Reset:
    """What happens to one group's weights at the start of a period.

    ``pretrained`` restores parameters and BatchNorm buffers from the snapshot
    taken before training (the ImageNet weights; the head's initial weights);
    ``random`` re-initialises the group as a freshly built model would;
    ``shrink_perturb`` sets θ ← shrink·θ + perturb·θ_random.
    """

    kind: str
    shrink: float = 1.0
    perturb: float = 0.0

    KINDS = ("pretrained", "random", "shrink_perturb")

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ScheduleError(f"unknown reset {self.kind!r}; valid: {', '.join(self.KINDS)}")
        finite = 0 <= self.shrink < math.inf and 0 <= self.perturb < math.inf
        if self.kind == "shrink_perturb" and not finite:
            raise ScheduleError(
                f"shrink_perturb needs finite shrink >= 0 and perturb >= 0, got {self.shrink}, {self.perturb}"
            )


PRETRAINED = Reset("pretrained")
RANDOM = Reset("random")


def shrink_perturb(shrink: float, perturb: float) -> Reset:
    """θ ← shrink·θ + perturb·θ_random (Ash & Adams, 2020)."""
    return Reset("shrink_perturb", shrink, perturb)


# ----------------------------------------------------------------------------- decays


@dataclass(frozen=True)
class StepDecay:
    """LR factor gamma ** (epoch // every) inside a period (torch StepLR).

    ``every="half"`` steps half-way through each period (rounded up), as the paper's StepLR(20) does in
    its 40-epoch periods, so the step follows the period length when that is tuned.
    """

    every: int | str = 20
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.every != "half":
            require_positive(every=self.every)
        require_positive(gamma=self.gamma)

    def factor(self, epoch: int, epochs: int) -> float:
        every = (epochs + 1) // 2 if self.every == "half" else self.every
        return self.gamma ** (epoch // every)


@dataclass(frozen=True)
class CosineDecay:
    """LR factor from 1 down to ``floor`` along a half cosine over the period (SGDR)."""

    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.floor <= 1:
            raise ScheduleError(f"cosine floor must be in [0, 1], got floor={self.floor}")

    def factor(self, epoch: int, epochs: int) -> float:
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


@dataclass(frozen=True)
class ConstantDecay:
    def factor(self, epoch: int, epochs: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Warmup:
    """A linear warm-up over the first ``epochs`` epochs of a period, times ``decay``'s factor.

    Epoch i (from 0) of the period runs at (i + 1) / (epochs + 1) of the rate, so epoch ``epochs`` is
    the first at the full rate: ``Warmup(2, StepDecay("half"))`` in a 6-epoch period gives the factors
    1/3, 2/3, 1, 0.1, 0.1, 0.1. Rolled-back blocks restart at a high rate; this eases them in.
    """

    epochs: int
    decay: Decay = ConstantDecay()

    def __post_init__(self) -> None:
        require_positive(epochs=self.epochs)

    def factor(self, epoch: int, epochs: int) -> float:
        ramp = (epoch + 1) / (self.epochs + 1) if epoch < self.epochs else 1.0
        return ramp * self.decay.factor(epoch, epochs)


Decay = StepDecay | CosineDecay | ConstantDecay | Warmup


# ----------------------------------------------------------------------------- conditional ends


@dataclass(frozen=True)
class Plateau:
    """A period may end early, once ``metric`` has not improved for ``patience`` epochs.

    An epoch improves on the period's best so far when its ``loss`` is lower by more than
    ``min_delta`` (its ``val_mAP`` higher by more than ``min_delta``); the first epoch sets the best.
    The period then ends after the epoch that makes ``patience`` epochs without an improvement, or at
    its maximum length, whichever comes first. ``reached`` is a pure function of the metric's values,
    so a resumed run takes the decisions an uninterrupted one took.
    """

    metric: Literal["loss", "val_mAP"] = "loss"
    patience: int = 5
    min_delta: float = 0.0

    METRICS = ("loss", "val_mAP")

    def __post_init__(self) -> None:
        if self.metric not in self.METRICS:
            raise ScheduleError(f"unknown plateau metric {self.metric!r}; valid: {', '.join(self.METRICS)}")
        require_positive(patience=self.patience)
        if isinstance(self.patience, bool) or not isinstance(self.patience, int):
            raise ScheduleError(f"patience must be a whole number of epochs, got patience={self.patience!r}")
        if not 0 <= self.min_delta < math.inf:
            raise ScheduleError(f"min_delta must be a finite number >= 0, got min_delta={self.min_delta!r}")

    def reached(self, values: Sequence[float]) -> bool:
        """Whether the period ends after the last of ``values`` (the metric after each of its epochs).

        >>> Plateau("loss", patience=2).reached([3.0, 2.0, 2.5, 2.1])
        True
        """
        sign = 1.0 if self.metric == "loss" else -1.0  # lower is better: losses, and mAPs negated
        best, stale = math.inf, 0
        for value in values:
            if sign * value < best - self.min_delta:
                best, stale = sign * value, 0
            else:
                stale += 1
        return stale >= self.patience


# ----------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    """One training period.

    ``lr`` gives the starting learning rate of every group (B1..B5, head);
    ``resets`` the groups reset at the period's start; ``frozen`` the groups
    that do not train during it (no gradient, BatchNorm in eval mode);
    ``reset_optimizer`` starts a new optimizer (momentum buffers at zero); ``until`` (a Plateau)
    lets the period end before its ``epochs``, which are then its maximum length.
    """

    epochs: int
    lr: Mapping[str, float]
    resets: Mapping[str, Reset] = field(default_factory=dict)
    frozen: frozenset[str] = frozenset()
    decay: Decay = StepDecay()
    reset_optimizer: bool = True
    until: Plateau | None = None

    def __post_init__(self) -> None:
        if self.until is not None and not isinstance(self.until, Plateau):
            raise ScheduleError(f"a period's until must be a Plateau or None, got {self.until!r}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs <= 0:
            raise ScheduleError(
                f"a period needs a positive whole number of epochs, got epochs={self.epochs!r}"
            )
        missing = [g for g in GROUPS if g not in self.lr]
        if missing:
            raise ScheduleError(
                f"period lr is missing groups {missing}; every one of {list(GROUPS)} needs one"
            )
        for group, value in self.lr.items():
            _check_group(group)
            if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
                raise ScheduleError(f"learning rate of {group} must be positive, got {value!r}")
        for group, reset in self.resets.items():
            _check_group(group)
            if not isinstance(reset, Reset):
                raise ScheduleError(f"reset of {group} must be a Reset, got {reset!r}")
        for group in self.frozen:
            _check_group(group)
        object.__setattr__(self, "frozen", frozenset(self.frozen))

    def lr_at(self, group: str, epoch: int) -> float:
        """Learning rate of ``group`` at 0-based ``epoch`` inside this period (0 when frozen)."""
        if group in self.frozen:
            return 0.0
        return self.lr[group] * self.decay.factor(epoch, self.epochs)


@dataclass(frozen=True)
class EpochPlan:
    """Everything the trainer needs to know about one epoch."""

    epoch: int  # from 1
    period: int  # from 1
    epoch_in_period: int  # from 1
    lr: dict[str, float]
    frozen: frozenset[str]
    resets: dict[str, Reset]  # non-empty only on the first epoch of a period
    reset_optimizer: bool  # True only on the first epoch of a period that asks for it
    last_in_period: bool  # in the maximum plan; settle() says whether a conditional period ends sooner
    until: Plateau | None = None  # the period may end after this epoch (not set on its maximum last)

    @property
    def first_in_period(self) -> bool:
        return self.epoch_in_period == 1


# ----------------------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Schedule:
    """Base class of every schedule: a frozen dataclass of parameters plus ``build()``.

    Subclass it, declare the parameters as dataclass fields with defaults,
    validate them in ``validate()``, and return the periods from ``build()``.
    Every schedule also has ``lr_warmup_epochs`` (0: none): a linear warm-up of the learning rates at
    the start of each of its periods (``Warmup``), around the decay the period has::

        @register("two_phase")
        @dataclass(frozen=True)
        class TwoPhase(Schedule):
            epochs: int = 10

            def build(self):
                lr = uniform_lr(0.01, head=0.1)
                return [Period(self.epochs, lr), Period(self.epochs, lr, resets={"B5": PRETRAINED})]
    """

    name = "schedule"
    # Keyword-only, so subclasses declare their own parameters as before (and it comes last).
    lr_warmup_epochs: int = field(default=0, kw_only=True)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = cls.__name__  # @register replaces it with the registered name

    def __post_init__(self) -> None:
        self.validate()
        if self.lr_warmup_epochs:
            self._check_warmup()

    def _check_warmup(self) -> None:
        warmup = self.lr_warmup_epochs
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ScheduleError(f"lr_warmup_epochs must be a whole number >= 0, got {warmup!r}")
        for number, period in enumerate(self.build(), start=1):
            if warmup >= period.epochs:
                raise ScheduleError(
                    f"lr_warmup_epochs={warmup} must be shorter than every period, "
                    f"but period {number} has {period.epochs} epochs"
                )

    def validate(self) -> None:
        """Raise ScheduleError for parameter values that make no sense."""

    def build(self) -> list[Period]:
        """The periods, in order. Pure: depends on the parameters only."""
        raise NotImplementedError

    @classmethod
    def parameter_names(cls) -> tuple[str, ...]:
        """The schedule's parameters in declaration order, the shared ``lr_warmup_epochs`` last."""
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        return tuple(sorted(names, key=lambda name: name == "lr_warmup_epochs"))

    def params(self) -> dict[str, object]:
        """The schedule's parameters as a plain dict (what configs hold and W&B logs)."""
        return {name: getattr(self, name) for name in self.parameter_names()}

    def plan(self) -> list[EpochPlan]:
        """Expand the periods into one EpochPlan per epoch (with ``lr_warmup_epochs``' warm-up in each)."""
        periods = self.build()
        if not periods:
            raise ScheduleError(f"schedule {self.name!r} has no periods")
        if self.lr_warmup_epochs:
            periods = [dataclasses.replace(p, decay=Warmup(self.lr_warmup_epochs, p.decay)) for p in periods]
        rows, epoch = [], 0
        for number, period in enumerate(periods, start=1):
            for inside in range(period.epochs):
                epoch += 1
                first = inside == 0
                rows.append(
                    EpochPlan(
                        epoch=epoch,
                        period=number,
                        epoch_in_period=inside + 1,
                        lr={g: period.lr_at(g, inside) for g in GROUPS},
                        frozen=period.frozen,
                        resets=dict(period.resets) if first else {},
                        reset_optimizer=first and (period.reset_optimizer or number == 1),
                        last_in_period=inside == period.epochs - 1,
                        until=period.until if inside < period.epochs - 1 else None,
                    )
                )
        return rows

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.build())


def uniform_lr(backbone: float, head: float) -> dict[str, float]:
    """Every block at ``backbone``, the head at ``head``."""
    return {**{b: backbone for b in BLOCKS}, "head": head}


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise ScheduleError(f"unknown block {group!r}{closest(group, GROUPS)}; valid: {', '.join(GROUPS)}")


def check_blocks(names: object, what: str) -> tuple[str, ...]:
    """Validate a list of block names (B1..B5) given as a schedule parameter."""
    if not isinstance(names, list | tuple):
        raise ScheduleError(f"{what} must be a list of blocks, got {names!r}")
    for name in names:
        if name not in BLOCKS:
            raise ScheduleError(
                f"{what} names unknown block {name!r}{closest(str(name), BLOCKS)}; valid: {', '.join(BLOCKS)}"
            )
    if len(set(names)) != len(names):
        raise ScheduleError(f"{what} names a block twice: {list(names)}")
    return tuple(names)


# ----------------------------------------------------------------------------- running a plan


def settle(step: EpochPlan, history: Sequence[Mapping[str, Any]]) -> EpochPlan:
    """``step`` with ``last_in_period`` set when its period ends after it, ``history`` ending with its record.

    A step without ``until`` is returned as it is; with one, the period ends when its Plateau is
    reached by the metric of the period's records so far (the trailing records of ``step.period``).
    """
    if step.until is None or step.last_in_period:
        return step
    values = [record[step.until.metric] for record in _period_records(history, step.period)]
    return dataclasses.replace(step, last_in_period=True) if step.until.reached(values) else step


def next_epoch(plan: Sequence[EpochPlan], history: Sequence[Mapping[str, Any]]) -> EpochPlan | None:
    """The epoch to train after ``history`` (the records of the epochs trained, with their ``period``
    and metrics), or None when the run is over; a pure function of the two, so resume is exact.

    For a plan without conditional ends this is ``plan[len(history)]``. After a period that ended
    early, the next period starts at once: the later periods shift earlier (their epochs renumbered
    from ``len(history) + 1``), and an early end of the last period ends the run.

    >>> from schedules import build_schedule
    >>> plan = build_schedule({"name": "plateau_rollback", "patience": 1}).plan()
    >>> next_epoch(plan, [{"period": 1, "loss": 2.0}, {"period": 1, "loss": 2.0}]).period
    2
    """
    if not history:
        return plan[0] if plan else None
    starts = {step.period: index for index, step in enumerate(plan) if step.first_in_period}
    period = history[-1]["period"]
    done = len(_period_records(history, period))
    last = settle(plan[starts[period] + done - 1], history)
    index = starts.get(period + 1) if last.last_in_period else starts[period] + done
    if index is None or index >= len(plan):
        return None
    return dataclasses.replace(plan[index], epoch=len(history) + 1)


def _period_records(history: Sequence[Mapping[str, Any]], period: int) -> list[Mapping[str, Any]]:
    start = len(history)
    while start > 0 and history[start - 1]["period"] == period:
        start -= 1
    return list(history[start:])
