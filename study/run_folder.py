"""The run folder: what one training run writes, under which names, and how it is read back.

    DIR/config.yaml                    the validated config
    DIR/metrics.csv                    one row per epoch (the history)
    DIR/summary.json                   best and final metrics
    DIR/checkpoints/epoch-NNNN.pt      at every period end
    DIR/checkpoints/epoch-NNNN-mid.pt  the newest one inside a period (train.checkpoint_every)

The trainer writes it; the sweep's trials, ``study.evaluate`` and the final retraining read it here.
A checkpoint holds the history up to its epoch, so a resumed run continues from the checkpoint alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from study.errors import UserError
from study.files import atomic_torch_save
from study.provenance import environment_of

CONFIG, METRICS, SUMMARY, CHECKPOINTS = "config.yaml", "metrics.csv", "summary.json", "checkpoints"


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run (its config or its history)."""
    return (run_dir / CONFIG).exists() or (run_dir / METRICS).exists()


def checkpoint_name(epoch: int, period_end: bool) -> str:
    """``epoch-0040.pt`` at a period end, ``epoch-0035-mid.pt`` inside a period.

    >>> checkpoint_name(35, period_end=False)
    'epoch-0035-mid.pt'
    """
    return f"epoch-{epoch:04d}{'' if period_end else '-mid'}.pt"


def checkpoint_epoch(path: Path) -> int:
    """The epoch of a checkpoint file, from its name.

    >>> checkpoint_epoch(Path("checkpoints/epoch-0035-mid.pt"))
    35
    """
    return int(path.name.split("-")[1].split(".")[0])


def checkpoints(run_dir: Path) -> list[Path]:
    """The run folder's checkpoint files, newest epoch first."""
    return sorted((run_dir / CHECKPOINTS).glob("epoch-*.pt"), key=checkpoint_epoch, reverse=True)


def save_checkpoint(run_dir: Path, state: dict[str, Any], epoch: int, period_end: bool) -> Path:
    """Write ``state`` as the checkpoint of ``epoch`` (atomically); older mid-period ones go."""
    path = run_dir / CHECKPOINTS / checkpoint_name(epoch, period_end)
    atomic_torch_save(state, path)
    for old in (run_dir / CHECKPOINTS).glob("epoch-*-mid.pt"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint and its path, the one a resumed run continues from.

    A truncated or corrupt file (a kill during a copy) is skipped with a warning.
    """
    for path in checkpoints(run_dir):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            print(f"warning: skipping unreadable checkpoint {path} ({type(error).__name__})")
    return None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file given by a user, checked: one-line UserErrors for what is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {str(path)!r} does not exist or is not a file")
    expected = "pass a checkpoint training wrote, e.g. RUN/checkpoints/epoch-0040.pt"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's own message misleads here (pickle internals, or advice to load with weights_only=False).
        raise UserError(
            f"{str(path)!r} is not a training checkpoint (torch.load fails: {type(error).__name__});"
            f" {expected}"
        ) from None
    if not (
        isinstance(checkpoint, dict)
        and isinstance(checkpoint.get("config"), dict)
        and isinstance(checkpoint.get("model"), dict)
    ):
        raise UserError(
            f"{str(path)!r} is not a training checkpoint: expected a dict with 'config' and 'model';"
            f" {expected}"
        )
    for entry in ("model", "ema"):
        problem = _state_dict_problem(checkpoint[entry]) if entry in checkpoint else None
        if problem:
            raise UserError(
                f"{str(path)!r} is not a training checkpoint: its {entry!r} {problem}, not a state_dict of"
                f" tensors; {expected}"
            )
    return checkpoint


def _state_dict_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"is {type(value).__name__}"
    for key, tensor in value.items():
        if not torch.is_tensor(tensor):
            return f"entry {key!r} is {type(tensor).__name__}"
    return None


def summary_of(history: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Epochs, best and final ``{prefix}_mAP`` and rank-1, final loss, seconds, peak GPU memory, environment.

    >>> rows = [{"epoch": 1, "loss": 2.0, "seconds": 3.0}, {"epoch": 2, "loss": 1.0, "seconds": 3.0,
    ...          "val_mAP": 0.5, "val_rank1": 0.4}]
    >>> summary_of(rows, "val")["best_epoch"], summary_of(rows, "val")["train_seconds"]
    (2, 6.0)
    """
    key = f"{prefix}_mAP"
    evaluated = [r for r in history if r.get(key) is not None]
    best = max(evaluated, key=lambda r: r[key]) if evaluated else {}
    final = evaluated[-1] if evaluated else {}
    return {
        "epochs": len(history),
        f"best_{key}": best.get(key),
        "best_epoch": best.get("epoch"),
        f"best_{prefix}_rank1": best.get(f"{prefix}_rank1"),
        f"final_{key}": final.get(key),
        f"final_{prefix}_rank1": final.get(f"{prefix}_rank1"),
        "final_loss": history[-1]["loss"] if history else None,
        "train_seconds": sum(r.get("seconds", 0.0) for r in history),
        "peak_gpu_mib": max((r["peak_gpu_mib"] for r in history if r.get("peak_gpu_mib")), default=None),
        "peak_host_mib": max((r["peak_host_mib"] for r in history if r.get("peak_host_mib")), default=None),
        **environment_of(history),
    }
