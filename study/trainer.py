"""The shared trainer: executes any schedule's plan, epoch by epoch, as Algorithm 1 of the paper.

At the start of a period: apply its resets (roll back to pre-trained, re-initialise,
shrink-and-perturb) and, if it asks, start a new optimizer. Every epoch: freeze what
the period freezes, set each group's learning rate from the plan, train, evaluate
when due, log, checkpoint. A period that may end early (on a plateau) ends when the pure
``schedules.settle`` says so; ``schedules.next_epoch`` then starts the next one at once.

One module of ~580 lines on purpose: ``train_run`` is the method, and every helper follows it in
the order the loop calls it (period boundaries, one epoch, evaluation, checkpoints, the run folder),
so the file reads top to bottom like Algorithm 1.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from schedules import BLOCKS, GROUPS, EpochPlan, Reset, next_epoch, settle
from study import run_folder
from study.config import RunConfig, config_from_dict
from study.data import Augment, ImageSet, ReIDData, load_data, make_sampler, normalize, random_batches
from study.data.sampler import Sampler
from study.devices import autocast_dtype, choose_device, uses_channels_last
from study.errors import UserError
from study.files import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    check_output_folder,
    remove_stale_temporaries,
)
from study.losses import ReIDLoss
from study.models import ReIDNet, build_model, group_state, snapshot
from study.pairing import evaluation_due
from study.prefixes import RunPrefixes
from study.provenance import run_environment
from study.regularizers import make_regularizers

EpochCallback = Callable[[dict[str, Any], Path | None], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    prefixes: RunPrefixes | None = None,
) -> dict[str, Any]:
    """Train one run of ``config`` into ``out_dir`` and return its summary.

    Writes ``metrics.csv`` (one row per epoch), ``summary.json``, ``config.yaml``
    and ``checkpoints/epoch-NNNN.pt`` (every period end; the latest mid-period one
    when ``train.checkpoint_every`` is set). ``on_epoch(record, checkpoint)`` is
    called after every epoch (sweeps report to Ray Tune from there). With ``prefixes`` (this run's
    part in a study's shared prefixes, ``study.prefixes``) it also saves the states other runs want.

    For example, ``train_run(load_config("search_spaces/demo.yaml"), "runs/demo-single")``.
    """
    out_dir = Path(out_dir)
    plan = config.built_schedule.plan()  # the maximum plan when periods may end early
    _check_plateaus(plan, config)
    check_output_folder(out_dir)
    checkpoint = _checkpoint_to_resume(out_dir, config, resume)
    device = choose_device(config.train.device)
    set_threads(config.train.threads)
    data = load_data(config.data)
    sampler = make_sampler(
        config.data.sampler, data.train.labels, config.train.batch_size, config.data.instances_per_identity
    )

    _seed_everything(config.train.seed)
    model = build_model(config.model, data.num_classes)
    # Only now, with the input known good, does the run folder appear.
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, out_dir / run_folder.CHECKPOINTS):  # what a kill inside a write left
        remove_stale_temporaries(folder)
    atomic_write_text(out_dir / run_folder.CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
    initial = snapshot(model)  # the pre-trained blocks and the initial head, restored bit for bit
    model.to(device)
    channels_last = uses_channels_last(device, config.train.channels_last)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if config.train.compile else model
    regularizers = make_regularizers(model, initial, config.train)  # L2-SP and the EMA, when configured
    optimizer: torch.optim.Optimizer | None = None
    history: list[dict[str, Any]] = []

    if checkpoint is not None:
        optimizer, history = _restore(checkpoint, model, config, device)
        regularizers.load(checkpoint)
        regularizers.attach(optimizer)
    place = cache_placement(config, data.train.images, device)
    batches = TrainBatches(
        data.train,
        config.train.batch_size,
        config.train.seed,
        device,
        channels_last=channels_last,
        place=place,
        sampler=sampler,
        augment=Augment(pad_crop=config.data.pad_crop, random_erasing=config.data.random_erasing),
    )
    autocast = autocast_context(device, autocast_dtype(device, config.train.precision, config.model.backbone))
    environment = run_environment(device)  # what besides the config decides the bits of each epoch

    while (step := next_epoch(plan, history)) is not None:
        if step.first_in_period:
            apply_resets(model, step.resets, initial, config, data.num_classes, step.period)
            regularizers.restart(model, step.resets)  # the EMA of a reset group restarts with it
            if step.reset_optimizer or optimizer is None:
                optimizer = make_optimizer(model, config)
                regularizers.attach(optimizer)
        set_frozen(model, step.frozen)
        set_learning_rates(optimizer, warmed_up(step.lr, step.epoch, config.train.warmup_epochs))

        record = {"epoch": step.epoch, "period": step.period}
        try:
            record |= train_epoch(forward, model, optimizer, batches.epoch(step), autocast, step, config)
        except Diverged:
            atomic_write_json(out_dir / run_folder.SUMMARY, summarize(history, config, status="diverged"))
            raise
        record |= block_drift(model, initial)
        if evaluation_due(step, config.train.eval_every, len(plan)):
            record |= evaluate_model(regularizers.evaluated(model), data, config, device)
        step = settle(step, [*history, record])  # a period that may end early ends here on a plateau
        record["period_end"] = int(step.last_in_period)
        record |= environment
        history.append(record)
        atomic_write_csv(out_dir / run_folder.METRICS, history)
        if config.train.progress:
            print(epoch_line(record, history, len(plan), config.data.evaluate_on), flush=True)

        saved = None
        shared = prefixes is not None and prefixes.save_after(step.epoch)  # another run starts from here
        if shared or _checkpoint_due(step, config):
            saved = save_checkpoint(out_dir, model, optimizer, config, history, step, regularizers.state())
        if shared:
            prefixes.publish(step.epoch, saved)
        if next_epoch(plan, history) is None:  # first: a sweep's scheduler may end the trial in on_epoch
            atomic_write_json(out_dir / run_folder.SUMMARY, summarize(history, config))
        if on_epoch is not None:
            on_epoch(record, saved)

    summary = summarize(history, config)
    if not (out_dir / run_folder.SUMMARY).exists():  # resumed from the final checkpoint of a killed run
        atomic_write_json(out_dir / run_folder.SUMMARY, summary)
    return summary


# ----------------------------------------------------------------------------- boundaries


def apply_resets(
    model: ReIDNet,
    resets: dict[str, Reset],
    initial: dict[str, torch.Tensor],
    config: RunConfig,
    num_classes: int,
    period: int,
) -> None:
    """Reset groups at a period boundary: restore the snapshot, re-initialise, or shrink and perturb."""
    if not resets:
        return
    fresh = None
    if any(reset.kind != "pretrained" for reset in resets.values()):
        fresh = _fresh_random_state(config, num_classes, seed=config.train.seed * 1000 + period)
    groups = model.groups()
    with torch.no_grad():
        for group, reset in resets.items():
            current = groups[group].state_dict()
            if reset.kind == "pretrained":
                target = group_state(initial, group)
            elif reset.kind == "random":
                target = group_state(fresh, group)
            else:
                random_state = group_state(fresh, group)
                target = {
                    name: reset.shrink * value + reset.perturb * random_state[name].to(value.device)
                    if value.is_floating_point()
                    else value
                    for name, value in current.items()
                }
            for name, value in current.items():
                value.copy_(target[name])


def _fresh_random_state(config: RunConfig, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    # A freshly built model gives each group torchvision's own initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = build_model(dataclasses.replace(config.model, weights="none"), num_classes)
    return fresh.state_dict()


def make_optimizer(model: ReIDNet, config: RunConfig) -> torch.optim.SGD:
    """SGD with one parameter group per block and one for the head, named after them."""
    train = config.train
    param_groups = [
        {"name": name, "params": list(module.parameters()), "lr": 0.0}
        for name, module in model.groups().items()
    ]
    return torch.optim.SGD(
        param_groups,
        lr=0.0,
        momentum=train.momentum,
        nesterov=train.nesterov and train.momentum > 0,
        weight_decay=train.weight_decay,
    )


def set_frozen(model: ReIDNet, frozen: frozenset[str]) -> None:
    """Frozen groups get no gradient and keep their BatchNorm statistics (eval mode)."""
    model.train()
    for name, module in model.groups().items():
        module.requires_grad_(name not in frozen)
        if name in frozen:
            module.eval()


def set_learning_rates(optimizer: torch.optim.Optimizer, rates: dict[str, float]) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rates[group["name"]]


def warmed_up(rates: dict[str, float], epoch: int, warmup_epochs: int) -> dict[str, float]:
    """The rates of ``epoch`` (from 1) under the run's linear warm-up: ``min(1, epoch / warmup_epochs)``.

    >>> warmed_up({"head": 0.1}, epoch=2, warmup_epochs=4)
    {'head': 0.05}
    """
    factor = min(1.0, epoch / warmup_epochs) if warmup_epochs else 1.0
    return {group: rate * factor for group, rate in rates.items()}


# ----------------------------------------------------------------------------- one epoch


class TrainBatches:
    """Sampled, augmented, normalised batches from the decoded uint8 image cache.

    ``sampler`` chooses each batch's images (shuffled by default; ``data.sampler: pk`` draws P
    identities x K images), ``augment`` flips them (and pads-and-crops, erases) on the device.
    The cache lives on the training device when it fits (``place="device"``); otherwise
    (``place="host"``) it stays in pinned host memory and each uint8 batch is gathered there
    and copied without blocking. The batches of an epoch depend only on (seed, epoch),
    so a resumed run sees exactly the batches an uninterrupted one would.
    """

    def __init__(
        self,
        train: ImageSet,
        batch_size: int,
        seed: int,
        device: torch.device,
        channels_last: bool = False,
        place: str = "device",
        sampler: Sampler | None = None,
        augment: Augment | None = None,
    ):
        on_host = place == "host" and device.type == "cuda"
        self.images = train.images.pin_memory() if on_host else train.images.to(device)
        self.labels = train.labels.to(device)
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.channels_last = channels_last
        self.sampler = sampler or (lambda generator: random_batches(len(self.images), batch_size, generator))
        self.augment = augment or Augment()

    def epoch(self, step: EpochPlan) -> SizedBatches:
        """The batches of one epoch, with their count (a progress bar can show its total)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step.epoch)
        order = self.sampler(generator)  # [batches, batch_size] image indices
        return SizedBatches(self._batches(order, generator), len(order))

    def _batches(
        self, order: torch.Tensor, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cache_order = order.to(self.images.device)
        labels_order = order.to(self.device)
        for index in range(len(order)):
            batch = self.images[cache_order[index]].to(self.device, non_blocking=True)
            images = normalize(self.augment(batch, generator))
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[labels_order[index]]


@dataclasses.dataclass
class SizedBatches:
    """An epoch's batch iterator that knows how many batches it yields."""

    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    count: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return self.count


def cache_placement(config: RunConfig, images: torch.Tensor, device: torch.device) -> str:
    """Where the uint8 cache lives: on the GPU when it takes under half its free memory ("auto")."""
    choice = config.train.data_on_device
    if choice != "auto":
        return "device" if choice == "always" else "host"
    if device.type != "cuda":
        return "device"
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if images.numel() < free // 2 else "host"


def train_epoch(
    forward: nn.Module,
    model: ReIDNet,
    optimizer: torch.optim.Optimizer,
    batches: Iterator,
    autocast: Callable,
    step: EpochPlan,
    config: RunConfig,
) -> dict[str, Any]:
    """One pass over the training set; returns loss, accuracy, learning rates and gradient norms."""
    loss_of = ReIDLoss.from_config(config.train)  # softmax cross-entropy unless a recipe adds to it
    group_params = [[p for p in module.parameters()] for module in model.groups().values()]
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    grad_norm_sum = torch.zeros(len(GROUPS), device=device)
    seen = steps = 0
    started = time.perf_counter()
    progress = _progress(batches, step, config)
    for images, labels in progress:
        with autocast():
            logits, pooled = forward(images, with_pooled=True)
            loss = loss_of(logits, pooled, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm_sum += _group_grad_norms(group_params, device)
        optimizer.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(dim=1) == labels).sum()
        seen += len(labels)
        steps += 1
    loss_value = loss_sum.item() / seen  # the one host sync of the epoch
    seconds = time.perf_counter() - started
    if not math.isfinite(loss_value):
        raise Diverged(f"training loss became {loss_value} in epoch {step.epoch}")
    record: dict[str, Any] = {"loss": loss_value, "accuracy": correct.item() / seen}
    record |= {f"lr_{group['name']}": group["lr"] for group in optimizer.param_groups}
    norms = (grad_norm_sum / steps).tolist()
    record |= {f"grad_norm_{g}": norm for g, norm in zip(GROUPS, norms, strict=True)}
    record |= {"seconds": seconds, "images_per_second": seen / seconds}
    if device.type == "cuda":  # what this process holds on the GPU: the fraction a sweep trial needs
        record["peak_gpu_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    record["peak_host_mib"] = peak_host_mib()  # and in host memory: how many trials fit at once
    return record


def _group_grad_norms(group_params: list[list[torch.Tensor]], device: torch.device) -> torch.Tensor:
    norms = []
    for params in group_params:
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float())
        else:
            norms.append(torch.zeros((), device=device))
    return torch.stack(norms)


def _progress(batches: Iterator, step: EpochPlan, config: RunConfig) -> Iterator:
    if not config.train.progress:
        return batches
    from tqdm import tqdm

    total = len(batches) if hasattr(batches, "__len__") else None
    desc = f"epoch {step.epoch} (period {step.period})"
    return tqdm(batches, desc=desc, total=total, leave=False, unit="batch", dynamic_ncols=True)


# ----------------------------------------------------------------------------- evaluation


def evaluate_model(
    model: ReIDNet, data: ReIDData, config: RunConfig, device: torch.device
) -> dict[str, float]:
    """mAP, CMC and mINP on the validation split (``val_*``) or the test set (``test_*``)."""
    from study.evaluate.features import evaluate

    metrics = evaluate(
        model,
        data.query,
        data.gallery,
        flip=config.train.flip_test,
        distance=config.train.distance,
        batch_size=config.train.eval_batch_size,
        device=device,
        dtype=autocast_dtype(device, config.train.precision, config.model.backbone),
    )
    prefix = config.data.evaluate_on
    return {f"{prefix}_{k}": metrics[k] for k in ("mAP", "rank1", "rank5", "rank10", "mINP")}


def _check_plateaus(plan: list[EpochPlan], config: RunConfig) -> None:
    metrics = {step.until.metric for step in plan if step.until is not None}
    if "val_mAP" in metrics and config.data.evaluate_on != "val":
        raise UserError(
            "a period ending on a val_mAP plateau needs data.evaluate_on=val (deciding on the test "
            "set would tune on it); use metric loss, or evaluate on val"
        )


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_due(step: EpochPlan, config: RunConfig) -> bool:
    every = config.train.checkpoint_every
    return step.last_in_period or (every > 0 and step.epoch_in_period % every == 0)


def save_checkpoint(
    out_dir: Path,
    model: ReIDNet,
    optimizer: torch.optim.Optimizer,
    config: RunConfig,
    history: list[dict[str, Any]],
    step: EpochPlan,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``checkpoints/epoch-NNNN.pt`` at period ends; inside periods only the newest ``-mid`` one.

    ``extra`` adds entries (the regularizers' state: ``ema``)."""
    state = {
        "format": 1,
        "epoch": step.epoch,
        "period": step.period,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "history": history,
        "torch_rng": torch.get_rng_state(),
        **(extra or {}),
    }
    return run_folder.save_checkpoint(out_dir, state, step.epoch, step.last_in_period)


def _restore(
    checkpoint: dict[str, Any], model: ReIDNet, config: RunConfig, device: torch.device
) -> tuple[torch.optim.Optimizer, list[dict[str, Any]]]:
    model.load_state_dict(checkpoint["model"])
    optimizer = make_optimizer(model, config)
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["torch_rng"])  # dropout continues as if never interrupted
    print(f"resuming after epoch {checkpoint['epoch']}")
    return optimizer, list(checkpoint["history"])


# ----------------------------------------------------------------------------- run folder


def _checkpoint_to_resume(out_dir: Path, config: RunConfig, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite another run; on resume, return the checkpoint to continue from. Writes nothing."""
    holds_run = run_folder.holds_run(out_dir)
    if holds_run and not resume:
        raise UserError(
            f"{out_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if not (resume and holds_run):
        return None
    newest = run_folder.newest_checkpoint(out_dir)
    if newest is None:
        print(f"no checkpoint in {out_dir}/checkpoints yet; starting from the beginning")
        return None
    checkpoint = newest[1]
    if not _same_run(checkpoint["config"], config):
        raise UserError(f"{out_dir} holds a run with a different config; choose another --out")
    return checkpoint


def _same_run(saved: dict[str, Any], config: RunConfig) -> bool:
    ignored = ("progress", "device", "eval_batch_size")
    a = config_from_dict(saved).to_dict()
    b = config.to_dict()
    for d in (a, b):
        for key in ignored:
            d["train"].pop(key, None)
    return a == b


def summarize(history: list[dict[str, Any]], config: RunConfig, status: str = "finished") -> dict[str, Any]:
    """Best and final metrics of a run (``summary.json``)."""
    return {
        "status": status,
        "schedule": config.schedule["name"],
        **run_folder.summary_of(history, config.data.evaluate_on),
        "config": config.to_dict(),
    }


def epoch_line(record: dict[str, Any], history: list[dict[str, Any]], total: int, prefix: str) -> str:
    """One line per epoch: ``epoch 3/9 (period 1): loss 4.211, train acc 12.3 %, 412 img/s, 18 s; ...``.

    The ETA is the mean epoch time of this run so far times the epochs left.
    """
    seconds = [r["seconds"] for r in history if "seconds" in r]
    left = (total - record["epoch"]) * (sum(seconds) / len(seconds)) if seconds else 0.0
    line = (
        f"epoch {record['epoch']}/{total} (period {record['period']}): loss {record['loss']:.3f}, "
        f"train acc {record['accuracy'] * 100:.1f} %, {record['images_per_second']:.0f} img/s, "
        f"{record['seconds']:.0f} s"
    )
    if f"{prefix}_mAP" in record:
        mAP, rank1 = record[f"{prefix}_mAP"] * 100, record[f"{prefix}_rank1"] * 100
        line += f"; {prefix} mAP {mAP:.2f} %, rank-1 {rank1:.2f} %"
    return line + (f"; ETA {duration(left)}" if record["epoch"] < total else "")


def duration(seconds: float) -> str:
    """``3 h 10 min``, ``12 min``; under a minute ``1 min``.

    >>> duration(11_400), duration(30)
    ('3 h 10 min', '1 min')
    """
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def block_drift(model: ReIDNet, initial: dict[str, torch.Tensor]) -> dict[str, float]:
    """How far each block has moved from its pre-trained weights: ‖θ − θ⁰‖ / ‖θ⁰‖ over its parameters.

    The paper's premise made visible: under ordinary fine-tuning the low blocks barely move.
    """
    drift = {}
    with torch.no_grad():
        for block in BLOCKS:
            start = group_state(initial, block)
            moved, size = [], []
            for name, param in model.blocks[block].named_parameters():
                before = start[name].to(param.device, torch.float32)
                moved.append((param.float() - before).pow(2).sum())
                size.append(before.pow(2).sum())
            drift[f"drift_{block}"] = (torch.stack(moved).sum() / torch.stack(size).sum()).sqrt()
    return {name: float(value) for name, value in drift.items()}


# ----------------------------------------------------------------------------- devices


def peak_host_mib() -> float:
    """The most host memory this process has held so far (its peak resident set), in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def set_threads(threads: int) -> None:
    """Use ``threads`` torch CPU threads (0: torch's own choice, or OMP_NUM_THREADS when set)."""
    if threads > 0:
        torch.set_num_threads(threads)


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> Callable:
    """A factory of autocast contexts in ``dtype`` (None: float32, no autocast)."""
    if dtype is None:
        return nullcontext
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
