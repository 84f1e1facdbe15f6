"""Shared prefixes: epochs that several runs of a study would compute alike are trained once.

Two runs compute their first k epochs bit for bit alike when everything but the schedule agrees
(data, model, training settings, seed) and their plans agree through epoch k, evaluations included
(``study.pairing.shared_epochs``): ``base_cy`` and every ``incremental_rollback`` of one period
length share their first period. Each run's plan names the state after each of its epochs by a
key that hashes all of that (``prefix_keys``): equal keys, equal states. The first run to reach a
key that another run wants saves its checkpoint there; the other starts from it.

    DIR/prefixes/KEY.pt             the checkpoint after epoch k, written once (atomically)
    DIR/prefixes/KEY.json           who trained it, and through which epoch
    DIR/prefixes/wanted/KEY         a run (or the study's plan) wants the state KEY
    DIR/prefixes/runs/NAME.json     a live run's keys, the epoch it has reached, training or waiting
    DIR/prefixes/runs/NAME.lock     held (flock) while that run lives: a killed run lets go of it
    DIR/prefixes/store.lock         held while a run decides what to take, wait for or save

A run that starts takes the longest stored prefix of its plan; if a live run is training towards a
longer one, it marks it wanted and waits for it (or for that run to end, then decides again: a
killed prefix is resumed by its own run's ``--resume``, or trained by the next run that needs it).
Writes are atomic and a stored prefix is never replaced, so two runs needing one prefix never
corrupt it. The folder may be deleted once the study is over.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from schedules import EpochPlan
from study import run_folder
from study.config import RunConfig
from study.files import (
    atomic_link_or_copy,
    atomic_torch_save,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
)
from study.pairing import evaluation_due, numerical_settings

PREFIXES = "prefixes"
SHARING_KEYS = ("shared_epochs", "shared_with")  # results.csv: epochs a trial took from another, whose
PREFIX_TAKEN = "prefix.json"  # in a run folder: the epochs it took from another run, and whose
WAIT_POLL_S = 2.0  # how often a waiting run looks for the prefix it waits for (a file appearing)


def prefix_keys(config: RunConfig) -> list[str]:
    """``keys[k - 1]`` names the state after epoch k of this run: a hash of what decides it.

    The keys stop at the first epoch that may end its period early (a plateau): what follows
    depends on the metrics, not only on the plan.

    >>> from study.config import config_from_dict
    >>> run = lambda name: config_from_dict({"data": {"root": "synthetic"},
    ...                                      "schedule": {"name": name, "period_epochs": 4}})
    >>> a, b = prefix_keys(run("base_cy")), prefix_keys(run("incremental_rollback"))
    >>> [x == y for x, y in zip(a, b)][3:6]
    [True, False, False]
    """
    plan = config.built_schedule.plan()
    digest = hashlib.sha256(json.dumps(numerical_settings(config), sort_keys=True, default=str).encode())
    keys = []
    for step in plan:
        digest.update(_step_text(step, evaluation_due(step, config.train.eval_every, len(plan))).encode())
        keys.append(digest.hexdigest()[:32])
        if step.until is not None:
            break
    return keys


def _step_text(step: EpochPlan, evaluated: bool) -> str:
    lr = sorted((group, repr(rate)) for group, rate in step.lr.items())
    resets = sorted((group, repr(reset)) for group, reset in step.resets.items())
    fields = (step.epoch, step.period, step.epoch_in_period, lr, sorted(step.frozen), resets)
    return repr((*fields, step.reset_optimizer, step.last_in_period, repr(step.until), evaluated))


def common_epochs(a: list[str], b: list[str]) -> int:
    """How many leading epochs two key chains share."""
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared


@dataclass(frozen=True)
class Fork:
    """Runs of a study that share their first ``epochs`` epochs (and no more, as a group)."""

    runs: tuple[str, ...]
    epochs: int


def forks(chains: dict[str, list[str]]) -> list[Fork]:
    """Every shared prefix among the runs, longest first: which runs share which leading epochs.

    >>> forks({"a": ["1", "2", "3"], "b": ["1", "2", "x"], "c": ["y"]})
    [Fork(runs=('a', 'b'), epochs=2)]
    """
    found: dict[str, tuple[int, set[str]]] = {}  # the key of a fork point -> (its epoch, the runs through it)
    names = list(chains)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if shared := common_epochs(chains[a], chains[b]):
                found.setdefault(chains[a][shared - 1], (shared, set()))[1].update((a, b))
    by_epochs = [Fork(tuple(n for n in names if n in runs), epochs) for epochs, runs in found.values()]
    return sorted(by_epochs, key=lambda fork: (-fork.epochs, fork.runs))


def epochs_saved(chains: dict[str, list[str]], lengths: dict[str, int]) -> tuple[int, int]:
    """(epochs trained with shared prefixes, epochs without): every distinct state is trained once."""
    total = sum(lengths.values())
    every, distinct = sum(map(len, chains.values())), len({k for chain in chains.values() for k in chain})
    return total - (every - distinct), total


def epochs_to_train(configs: dict[str, RunConfig]) -> tuple[int, int]:
    """(epochs these runs train with shared prefixes, epochs without)."""
    chains = {name: prefix_keys(config) for name, config in configs.items()}
    return epochs_saved(
        chains, {name: config.built_schedule.total_epochs for name, config in configs.items()}
    )


def describe_sharing(configs: dict[str, RunConfig]) -> list[str]:
    """The opening lines of a study: which runs share which epochs, and the epochs that saves."""
    found = forks({name: prefix_keys(config) for name, config in configs.items()})
    if not found:
        return ["shared prefixes: none (no two runs plan the same first epoch)"]
    trained, total = epochs_to_train(configs)
    saved = total - trained
    lines = [
        f"shared prefixes: {trained} epochs to train instead of {total} "
        f"({saved} saved, {100 * saved / total:.0f} %)"
    ]
    lines += [f"  epochs 1-{fork.epochs}: {', '.join(fork.runs)}" for fork in found]
    return lines


class PrefixStore:
    """The shared prefixes of one study, in ``folder`` (DIR/prefixes)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def want_forks(self, configs: dict[str, RunConfig]) -> None:
        """Mark the fork points of runs known before they start, so whichever runs first saves them."""
        chains = {name: prefix_keys(config) for name, config in configs.items()}
        for fork in forks(chains):
            self._want(chains[fork.runs[0]][fork.epochs - 1])

    @contextlib.contextmanager
    def joined(self, name: str, config: RunConfig, run_dir: Path) -> Iterator[RunPrefixes]:
        """Join the study as run ``name``: start ``run_dir`` from the longest prefix others trained
        (waiting for one a live run is training), and offer this run's states to the others."""
        for folder in (self.folder, self.folder / "runs"):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(folder)
        run = RunPrefixes(self, name, prefix_keys(config))
        lock = os.open(self.folder / "runs" / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held while this run lives
            run.start(config, run_dir)
            yield run
        finally:
            with self._locked():
                (self.folder / "runs" / f"{name}.json").unlink(missing_ok=True)
            os.close(lock)

    # -- what runs share, under the store's lock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.folder / "store.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _stored(self, key: str) -> bool:
        return (self.folder / f"{key}.pt").exists()

    def _want(self, key: str) -> None:
        (self.folder / "wanted").mkdir(parents=True, exist_ok=True)
        (self.folder / "wanted" / key).touch()

    def _wanted(self, key: str) -> bool:
        return (self.folder / "wanted" / key).exists()

    def _live_runs(self) -> dict[str, dict[str, Any]]:
        """The runs that hold their lock now, with their keys, epoch and state."""
        live = {}
        for claim in (self.folder / "runs").glob("*.json"):
            name = claim.stem
            try:
                record = json.loads(claim.read_text())
            except (OSError, ValueError):
                continue
            if _holds_lock(self.folder / "runs" / f"{name}.lock"):
                live[name] = record
        return live

    def _register(self, name: str, keys: list[str], epoch: int, state: str) -> None:
        record = {"keys": keys, "epoch": epoch, "state": state}
        atomic_write_json(self.folder / "runs" / f"{name}.json", record)


class RunPrefixes:
    """One run's part in a study's shared prefixes: what it took, and the states it saves for others."""

    def __init__(self, store: PrefixStore, name: str, keys: list[str]):
        self.store = store
        self.name = name
        self.keys = keys
        self.taken: dict[str, Any] | None = None  # {"epochs": k, "trained_by": run} once a prefix is taken

    def start(self, config: RunConfig, run_dir: Path) -> None:
        """Take the longest prefix of this run stored (or being trained) beyond its own checkpoint."""
        if (run_dir / PREFIX_TAKEN).exists():  # taken before this run was interrupted
            self.taken = json.loads((run_dir / PREFIX_TAKEN).read_text())
        while True:
            own = run_folder.checkpoints(run_dir)
            own_epoch = run_folder.checkpoint_epoch(own[0]) if own else 0
            with self.store._locked():
                beyond_own = range(own_epoch + 1, len(self.keys) + 1)
                stored = max((k for k in beyond_own if self.store._stored(self.keys[k - 1])), default=0)
                waited = self._training_towards(max(own_epoch, stored))
                if waited is None:
                    self.store._register(self.name, self.keys, max(own_epoch, stored), "training")
                else:
                    other, epochs = waited
                    self.store._want(self.keys[epochs - 1])
                    self.store._register(self.name, self.keys, own_epoch, "waiting")
            if waited is None:
                break
            print(f"waiting for epochs 1-{epochs}, which run {other} is training for this run too")
            self._wait_for(self.keys[epochs - 1], other)
        if stored:
            self._take(stored, config, run_dir)

    def _training_towards(self, beyond: int) -> tuple[str, int] | None:
        """A live training run that will reach a longer shared prefix than ``beyond`` epochs."""
        best = None
        for other, record in self.store._live_runs().items():
            if other == self.name or record["state"] != "training":
                continue
            shared = common_epochs(self.keys, record["keys"])
            if shared > beyond and record["epoch"] < shared and (best is None or shared > best[1]):
                best = (other, shared)
        return best

    def _wait_for(self, key: str, other: str) -> None:
        lock = self.store.folder / "runs" / f"{other}.lock"
        while not self.store._stored(key) and _holds_lock(lock):
            time.sleep(WAIT_POLL_S)

    def _take(self, epochs: int, config: RunConfig, run_dir: Path) -> None:
        """Start ``run_dir`` from the stored state after ``epochs``: a checkpoint with this run's config."""
        import torch

        key = self.keys[epochs - 1]
        state = torch.load(self.store.folder / f"{key}.pt", map_location="cpu", weights_only=True)
        origin = json.loads((self.store.folder / f"{key}.json").read_text())
        state["config"] = config.to_dict()
        period_end = bool(state["history"][-1].get("period_end", 0))
        name = run_folder.checkpoint_name(epochs, period_end)
        atomic_torch_save(state, run_dir / run_folder.CHECKPOINTS / name)
        # the folder now holds this run as if stopped after those epochs: the trainer resumes from there
        atomic_write_csv(run_dir / run_folder.METRICS, state["history"])
        atomic_write_text(run_dir / run_folder.CONFIG, yaml.safe_dump(config.to_dict(), sort_keys=False))
        self.taken = {"epochs": epochs, "trained_by": origin["trained_by"]}
        atomic_write_json(run_dir / PREFIX_TAKEN, self.taken)
        print(f"starting from epochs 1-{epochs} trained by run {origin['trained_by']} (a shared prefix)")

    def save_after(self, epoch: int) -> bool:
        """After ``epoch``: record the progress; whether another run wants this state saved."""
        if epoch > len(self.keys):
            return False
        key = self.keys[epoch - 1]
        with self.store._locked():
            self.store._register(self.name, self.keys, epoch, "training")
            return self.store._wanted(key) and not self.store._stored(key)

    def publish(self, epoch: int, checkpoint: Path) -> None:
        """Store this run's checkpoint after ``epoch`` as the shared state of its key, unless one is."""
        key = self.keys[epoch - 1]
        origin = self.taken["trained_by"] if self.taken and self.taken["epochs"] >= epoch else self.name
        with self.store._locked():
            if self.store._stored(key):
                return
            atomic_write_json(self.store.folder / f"{key}.json", {"trained_by": origin, "epochs": epoch})
            atomic_link_or_copy(checkpoint, self.store.folder / f"{key}.pt")


def _holds_lock(path: Path) -> bool:
    """Whether a live process holds the flock on ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
