"""Training throughput (images/s): the project's trainer path against the paper's code's pipeline.

    python -m benchmarks.bench_train_throughput                      # sized for the device found
    python -m benchmarks.bench_train_throughput --backbone resnet50 --height 288 --width 144 --batch 32
    python -m benchmarks.bench_train_throughput --data ../shared/data/cuhk03 --images 2048 --steps 50

One run, one machine, one model and batch size; every trial excludes its warm-up steps:
  ours        TrainBatches (uint8 image cache on the device; shuffle, flip and normalisation as
              tensor ops) feeding the real train_epoch (per-group gradient norms, SGD with Nesterov
              momentum), in the precision and memory format the trainer chooses (study/devices.py)
  reference   the paper's code: JPEG files decoded by PIL and torchvision transforms (bicubic
              Resize, RandomHorizontalFlip, ToTensor, Normalize) in a shuffling DataLoader with
              workers (pinned memory on CUDA), a float32 model, a plain SGD step, and the loss read
              back every step (``loss.data[0]`` in the official loop)
  no data     train_epoch on one batch already on the device: ours without the input pipeline
  plain loop  forward + backward + optimizer step on random tensors already on the device, nothing
              else, in each of NCHW / channels_last x float32 / bf16 autocast; the best is the ceiling
  compiled    with --compile: ours with the model's forward through torch.compile (train.compile)
Images are the synthetic JPEGs of study.data.synthesize (or --data ROOT's training images), reused in
a cycle when --images asks for more. Defaults: the paper's sizes on CUDA, a small model on CPU.
Every trial runs once per round (--rounds) and its best round is reported, so that a busy spell of a
shared machine does not decide a ratio; the images/s of every round are printed too.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision import transforms

from schedules import build_schedule
from study.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from study.data import IMAGENET_MEAN, IMAGENET_STD, ImageSet, decode_images, split_samples
from study.devices import autocast_dtype, uses_channels_last
from study.models import build_model
from study.trainer import (
    TrainBatches,
    autocast_context,
    make_optimizer,
    set_frozen,
    set_learning_rates,
    train_epoch,
)

DEFAULTS = {
    "cuda": {"backbone": "resnet50", "height": 288, "width": 144, "images": 2048, "steps": 100, "warmup": 10},
    "cpu": {"backbone": "mobilenet_v2", "height": 128, "width": 64, "images": 512, "steps": 20, "warmup": 3},
}
# The paper's full protocol: Market-1501's training set, 4 periods x 40 epochs.
PAPER = {"backbone": "resnet50", "height": 288, "width": 144, "batch": 32, "images": 12_936, "epochs": 160}


# Steps of the CUDA host-sync count after each trial: syncs of 2k steps minus those of k steps.
SYNC_CHECK_STEPS = 5


@dataclasses.dataclass
class Trial:
    name: str
    seconds: float
    images: int
    peak_bytes: int | None
    syncs_per_step: float | None
    warmup_seconds: float  # the untimed steps: torch.compile's compiling happens there

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds


class JpegFiles(torch.utils.data.Dataset):
    """(transformed image, label) of image files: the paper's code's dataset."""

    def __init__(self, paths: list[str], labels: list[int], transform: Callable):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), self.labels[index]


def timed_trial(
    name: str, run_steps: Callable[[int], None], warmup: int, steps: int, batch: int, device: torch.device
) -> Trial:
    """Run ``warmup`` steps, then time ``steps`` steps; on CUDA also the peak memory and host syncs."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run_steps(warmup)
    _synchronize(device)
    warmup_seconds = time.perf_counter() - started
    started = time.perf_counter()
    run_steps(steps)
    _synchronize(device)
    seconds = time.perf_counter() - started
    if device.type != "cuda":
        return Trial(name, seconds, steps * batch, None, None, warmup_seconds)
    peak = torch.cuda.max_memory_allocated(device)
    # The difference leaves out what a call costs once (train_epoch reads its sums back at its end).
    k = SYNC_CHECK_STEPS
    syncs = (_count_syncs(run_steps, 2 * k) - _count_syncs(run_steps, k)) / k
    return Trial(name, seconds, steps * batch, peak, syncs, warmup_seconds)


def _count_syncs(run_steps: Callable[[int], None], n: int) -> int:
    """Synchronising CUDA calls (device to host waits) made by ``run_steps(n)``."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_steps(n)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours_setup(config: RunConfig, num_classes: int, device: torch.device):
    """The model, optimizer, first epoch and autocast of a run, as study.trainer.train_run prepares them."""
    model = build_model(config.model, num_classes).to(device)
    if uses_channels_last(device, config.train.channels_last):
        model.to(memory_format=torch.channels_last)
    step = build_schedule(config.schedule).plan()[0]
    optimizer = make_optimizer(model, config)
    set_frozen(model, step.frozen)
    set_learning_rates(optimizer, step.lr)
    dtype = autocast_dtype(device, config.train.precision, config.model.backbone)
    return model, optimizer, step, autocast_context(device, dtype)


def run_ours(config: RunConfig, train: ImageSet, num_classes: int, device, args, compiled=False) -> Trial:
    model, optimizer, step, autocast = ours_setup(config, num_classes, device)
    forward = torch.compile(model) if compiled else model  # as train.compile: true does
    channels_last = uses_channels_last(device, config.train.channels_last)
    batches = TrainBatches(train, args.batch, config.train.seed, device, channels_last=channels_last)
    # Epoch after epoch, each with its own order and flips, as the trainer draws them.
    stream = itertools.chain.from_iterable(
        batches.epoch(dataclasses.replace(step, epoch=epoch)) for epoch in itertools.count(1)
    )

    def run_steps(n: int) -> None:
        train_epoch(forward, model, optimizer, itertools.islice(stream, n), autocast, step, config)

    name = "ours + torch.compile" if compiled else "ours (TrainBatches + train_epoch)"
    return timed_trial(name, run_steps, args.warmup, args.steps, args.batch, device)


def run_no_data(config: RunConfig, num_classes: int, device, args) -> Trial:
    model, optimizer, step, autocast = ours_setup(config, num_classes, device)
    images, labels = _device_batch(args, num_classes, device, uses_channels_last(device, True))

    def run_steps(n: int) -> None:
        train_epoch(model, model, optimizer, itertools.repeat((images, labels), n), autocast, step, config)

    return timed_trial(
        "no data (train_epoch, one device batch)", run_steps, args.warmup, args.steps, args.batch, device
    )


PLAIN_LOOPS = [(channels_last, dtype) for channels_last in (False, True) for dtype in (None, torch.bfloat16)]


def run_plain_loop(
    config: RunConfig, num_classes: int, device, args, channels_last: bool, dtype: torch.dtype | None
) -> Trial:
    plain = dataclasses.replace(
        config, train=dataclasses.replace(config.train, channels_last=channels_last, precision="fp32")
    )
    model, optimizer, _, _ = ours_setup(plain, num_classes, device)
    images, labels = _device_batch(args, num_classes, device, channels_last)
    autocast = autocast_context(device, dtype)

    def run_steps(n: int) -> None:
        for _ in range(n):
            with autocast():
                loss = F.cross_entropy(model(images).float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    name = f"plain loop, {'channels_last' if channels_last else 'NCHW'} {'bf16' if dtype else 'fp32'}"
    return timed_trial(name, run_steps, args.warmup, args.steps, args.batch, device)


def _device_batch(
    args, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.randint(0, num_classes, (args.batch,), device=device)


def run_reference(paths: list[str], labels: list[int], num_classes: int, device, args) -> Trial:
    transform = transforms.Compose(
        [
            transforms.Resize((args.height, args.width), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    dataset = JpegFiles(paths, labels, transform)
    # Reshuffled every epoch, as shuffle=True does, for as many images as the trial takes.
    sampler = torch.utils.data.RandomSampler(
        dataset,
        num_samples=(args.warmup + args.steps + 3 * SYNC_CHECK_STEPS) * args.batch,
        generator=torch.Generator().manual_seed(0),
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    model = build_model(ModelConfig(backbone=args.backbone, weights="none"), num_classes).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = iter(loader)  # its workers end with the trial
    running = {"loss": 0.0, "correct": torch.zeros((), dtype=torch.long, device=device)}

    def run_steps(n: int) -> None:
        for images, targets in itertools.islice(batches, n):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            logits = model(images)
            loss = F.cross_entropy(logits, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running["loss"] += loss.item() * len(targets)
            running["correct"] += (logits.argmax(1) == targets).sum()

    return timed_trial(
        "reference (PIL + torchvision DataLoader)", run_steps, args.warmup, args.steps, args.batch, device
    )


def training_images(args) -> tuple[list[str], torch.Tensor, str]:
    """``args.images`` training image paths (cycled), their identities, and a description."""
    root = args.data or "synthetic"
    samples = split_samples(DataConfig(root=root, evaluate_on="test"))[0]
    chosen = [samples[i % len(samples)] for i in range(args.images)]
    what = "synthetic JPEGs (study.data.synthesize)" if args.data is None else args.data
    cycled = f", {len(samples)} distinct files reused in a cycle" if len(samples) < args.images else ""
    return [s.path for s in chosen], torch.tensor([s.pid for s in chosen]), f"{what}{cycled}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", help="default: resnet50 on CUDA, mobilenet_v2 on CPU")
    parser.add_argument("--height", type=int, help="default: 288 on CUDA, 128 on CPU")
    parser.add_argument("--width", type=int, help="default: 144 on CUDA, 64 on CPU")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, help="training images (default: 2048 on CUDA, 512 on CPU)")
    parser.add_argument("--steps", type=int, help="timed steps per trial (default: 100 on CUDA, 20 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps before each trial (default: 10 / 3)")
    # The official code uses 16 workers; here at most one per core but one, which the training loop needs.
    workers = min(16, max(1, len(os.sched_getaffinity(0)) - 1))
    parser.add_argument(
        "--workers", type=int, default=workers, help=f"reference DataLoader (default {workers})"
    )
    parser.add_argument("--rounds", type=int, default=2, help="every trial runs once a round; best kept")
    parser.add_argument("--data", help="a data set root to read JPEGs from instead of the synthetic set")
    parser.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16"], help="ours' train.precision"
    )
    args = parser.parse_args()
    args.device = torch.device(args.device)
    for key, value in DEFAULTS["cuda" if args.device.type == "cuda" else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if (
        min(args.batch, args.images, args.steps, args.rounds) < 1
        or args.warmup < 0
        or args.images < args.batch
    ):
        parser.error("--batch, --images, --steps, --rounds must be >= 1, --warmup >= 0, --images >= --batch")
    return args


def main() -> None:
    args = parse_args()
    device = args.device
    torch.manual_seed(0)
    gpu = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    print(
        f"device: {device}{gpu}, {torch.get_num_threads()} torch CPU threads,"
        f" {args.workers} DataLoader workers"
    )
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    paths, pids, what = training_images(args)
    classes, labels = torch.unique(pids, return_inverse=True)
    num_classes = len(classes)
    print(
        f"sizes: {args.backbone}, {args.height}x{args.width}, batch {args.batch}, {args.images} images of "
        f"{num_classes} identities from {what}; {args.warmup} warm-up + {args.steps} timed steps per trial"
    )

    started = time.perf_counter()
    train = ImageSet(
        decode_images(paths, args.height, args.width), pids, torch.zeros_like(pids), paths, labels
    )
    cache_bytes = train.images.numel()
    seconds = time.perf_counter() - started
    print(
        f"one-time decode into the uint8 cache (ours, not timed below): {seconds:.1f} s,"
        f" {cache_bytes / 2**20:.0f} MiB"
    )
    config = RunConfig(
        model=ModelConfig(backbone=args.backbone, weights="none"),
        train=TrainConfig(batch_size=args.batch, progress=False, precision=args.precision),
    )
    runs = [
        lambda: run_ours(config, train, num_classes, device, args),
        lambda: run_reference(paths, labels.tolist(), num_classes, device, args),
        lambda: run_no_data(config, num_classes, device, args),
        *[
            functools.partial(run_plain_loop, config, num_classes, device, args, channels_last, dtype)
            for channels_last, dtype in PLAIN_LOOPS
        ],
    ]
    if args.compile:  # compiled once in its first round's warm-up steps
        runs.append(lambda: run_ours(config, train, num_classes, device, args, compiled=True))
    # Rounds interleave the trials, so that a slow spell of a shared machine does not hit one trial only.
    rounds = [[run() for run in runs] for _ in range(args.rounds)]
    per_trial = list(zip(*rounds, strict=True))
    trials = [max(results, key=lambda t: t.images_per_second) for results in per_trial]

    print(f"\nbest of {args.rounds} rounds")
    header = f"{'trial':<42} {'images/s':>9} {'ms/step':>8}"
    cuda_header = f" {'peak GPU MiB':>13} {'syncs/step':>10}"
    print(header + (cuda_header if device.type == "cuda" else "") + "  images/s by round")
    for trial, results in zip(trials, per_trial, strict=True):
        line = f"{trial.name:<42} {trial.images_per_second:9.1f} {1000 * trial.seconds / args.steps:8.1f}"
        if trial.peak_bytes is not None:
            line += f" {trial.peak_bytes / 2**20:13.0f} {trial.syncs_per_step:10.1f}"
        print(line + "  " + " ".join(f"{t.images_per_second:.1f}" for t in results))
    ours, reference = trials[:2]
    plain = trials[3 : 3 + len(PLAIN_LOOPS)]
    ceiling = max(plain, key=lambda t: t.images_per_second)
    dtype = autocast_dtype(device, config.train.precision, config.model.backbone)
    print(
        f"\nours runs {'channels_last' if uses_channels_last(device, True) else 'NCHW'}"
        f" {'bf16' if dtype else 'fp32'} (train.precision auto); the ceiling is the best plain loop:"
        f" {ceiling.name.removeprefix('plain loop, ')}"
    )
    print(f"ours / reference: {ours.images_per_second / reference.images_per_second:.2f}x")
    print(f"ours / ceiling: {ours.images_per_second / ceiling.images_per_second:.2f}")
    if args.compile:
        compiled = trials[-1]
        print(f"ours + torch.compile / ceiling: {compiled.images_per_second / ceiling.images_per_second:.2f}")
        warmups = ", ".join(f"{trial.warmup_seconds:.1f}" for trial in per_trial[4])
        print(f"torch.compile: {args.warmup} warm-up steps (compiling included) took {warmups} s by round")
    if device.type == "cuda":
        _print_memory(ours, cache_bytes, args, device)
    _print_estimate(ours, args, device)


def _print_memory(ours: Trial, cache_bytes: int, args, device: torch.device) -> None:
    full_cache = PAPER["images"] * 3 * args.height * args.width
    need = ours.peak_bytes - cache_bytes + full_cache
    total = torch.cuda.get_device_properties(device).total_memory
    print(
        f"peak GPU memory of ours with all {PAPER['images']:,} training images cached at"
        f" {args.height}x{args.width}: about "
        f"{need / 2**30:.2f} GiB = {need / total:.2f} of this GPU's {total / 2**30:.0f} GiB"
        " (validation images and evaluation not included)"
    )


def _print_estimate(ours: Trial, args, device: torch.device) -> None:
    steps = PAPER["epochs"] * (PAPER["images"] // args.batch)
    minutes = steps * args.batch / ours.images_per_second / 60
    measured = (args.backbone, args.height, args.width, args.batch)
    paper = (PAPER["backbone"], PAPER["height"], PAPER["width"], PAPER["batch"])
    note = ""
    if measured != paper:
        note = (
            f"; measured with {args.backbone} at {args.height}x{args.width}, batch {args.batch},"
            " not the paper's resnet50 at 288x144, batch 32"
        )
    print(
        f"full protocol estimate: {minutes:,.0f} min ({minutes / 60:,.1f} h) on {device.type}"
        f" ({PAPER['epochs']} epochs x "
        f"{PAPER['images']:,} images at ours' throughput, training steps only{note})"
    )


if __name__ == "__main__":
    main()
