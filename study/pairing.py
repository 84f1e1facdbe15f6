"""Which runs of a study are exactly paired: the same computation up to some epoch, and shown to be.

Two runs with the same data, model, training settings and seed whose schedules plan the same first
k epochs (e.g. ``base_cy`` and ``incremental_rollback``: their first period) compute the same bits
through epoch k, provided they also ran on the same kind of processor with the same torch build and
thread count (``study.provenance``). A comparison is called *paired* only where that holds.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

from schedules import EpochPlan
from study.config import RunConfig
from study.provenance import PAIRING_KEYS

# Settings that change where or how fast a run computes, not what it computes.
NOT_NUMERICAL = ("progress", "device", "eval_batch_size")
# Recorded per epoch but measured, not computed: they differ between identical runs.
MEASURED = ("seconds", "images_per_second", "peak_gpu_mib", "peak_host_mib")


def evaluation_due(step: EpochPlan, eval_every: int, total: int) -> bool:
    """Whether the trainer evaluates after ``step`` of a ``total``-epoch plan: every ``eval_every``
    epochs, at every period end and at the last epoch; after every epoch of a period that may end
    early (on a plateau), since it may be its last."""
    ends = step.last_in_period or step.until is not None or step.epoch == total
    return ends or (eval_every > 0 and step.epoch % eval_every == 0)


def shared_epochs(a: RunConfig, b: RunConfig) -> int:
    """How many leading epochs two runs compute identically by construction (0: none).

    Everything but the schedule must agree (data, model, training settings, seed); then the plans'
    epochs are compared one by one, with where each run evaluates. A period that may end early
    (a plateau) is shared only through its first epoch that may end it: what follows depends on
    the metrics.

    >>> from study.config import config_from_dict
    >>> run = lambda schedule: config_from_dict({"data": {"root": "synthetic"}, "schedule": schedule})
    >>> shared_epochs(run({"name": "base_cy", "period_epochs": 4}), run({"name": "incremental_rollback",
    ...     "period_epochs": 4}))
    4
    """
    if numerical_settings(a) != numerical_settings(b):
        return 0
    plan_a, plan_b = a.built_schedule.plan(), b.built_schedule.plan()
    shared = 0
    for step_a, step_b in zip(plan_a, plan_b, strict=False):  # the shorter plan ends the prefix
        due_a = evaluation_due(step_a, a.train.eval_every, len(plan_a))
        if step_a != step_b or due_a != evaluation_due(step_b, b.train.eval_every, len(plan_b)):
            break
        shared += 1
        if step_a.until is not None:
            break
    return shared


def first_difference(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]], through: int) -> int | None:
    """The first epoch (up to ``through``) whose recorded numbers differ between two runs' epoch rows,
    or None when they agree bit for bit (or neither reached it). Measured times are not compared.

    >>> first_difference([{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.0}],
    ...                  [{"epoch": 1, "loss": 2.5}, {"epoch": 2, "loss": 2.1}], through=2)
    2
    """
    by_epoch_b = {row["epoch"]: row for row in rows_b}
    for row_a in rows_a:
        epoch = row_a["epoch"]
        row_b = by_epoch_b.get(epoch)
        if epoch > through or row_b is None:
            break
        for key, value in row_a.items():
            if key in MEASURED or not isinstance(value, Real) or isinstance(value, bool):
                continue
            other = row_b.get(key)
            if not _same_number(value, other):
                return epoch
    return None


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The pairing keys (threads, CPU, GPU, torch) in which two trials' recorded environments differ;
    ``["not recorded"]`` when either recorded none.

    >>> environment_differences({"threads": 1, "cpu_model": "X"}, {"threads": 2, "cpu_model": "X"})
    ['threads 1 vs 2']
    """
    if any(_missing(row.get("threads")) for row in (a, b)):
        return ["not recorded"]
    return [
        f"{key.replace('_', ' ')} {_shown(a.get(key))} vs {_shown(b.get(key))}"
        for key in PAIRING_KEYS
        if _shown(a.get(key)) != _shown(b.get(key))
    ]


def numerical_settings(config: RunConfig) -> dict[str, Any]:
    """The config but its schedule (the plans are compared epoch by epoch) and what does not change
    the numbers: W&B, progress bars, the device choice and the evaluation batch size."""
    settings = config.to_dict()
    settings.pop("schedule")
    settings.pop("wandb", None)
    for key in NOT_NUMERICAL:
        settings["train"].pop(key, None)
    return settings


def _same_number(a: Any, b: Any) -> bool:
    if _missing(a) and _missing(b):
        return True
    return not (_missing(a) or _missing(b)) and float(a) == float(b)


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and value != value)


def _shown(value: Any) -> str:
    if _missing(value):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
