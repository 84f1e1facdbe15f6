"""Shared prefixes: runs that plan the same first epochs train them once, and end as if each had
trained alone, whatever the order, with runs at once, killed or resumed."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study import trainer
from study.config import config_from_dict
from study.pairing import MEASURED, shared_epochs
from study.prefixes import PrefixStore, describe_sharing, epochs_saved, forks, prefix_keys

ROLLBACK = {"name": "incremental_rollback", "periods": 3, "period_epochs": 2}
BASE_CY = {"name": "base_cy", "periods": 3, "period_epochs": 2}
FINETUNE = {"name": "finetune", "epochs": 6}
ROOT = Path(__file__).resolve().parents[2]


def run(schedule: dict, **sections: dict):
    return config_from_dict({"data": {"root": "synthetic"}, "schedule": schedule, **sections})


def metrics(folder) -> list[dict]:
    """The numbers of a run's epochs, without the times (measured, so never alike)."""
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows(folder)]


def rows(folder) -> list[dict]:
    with (folder / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def trained_once(a, b, epochs: int) -> bool:
    """Whether two runs' first epochs are one computation: even their measured times agree."""
    return [r["seconds"] for r in rows(a)[:epochs]] == [r["seconds"] for r in rows(b)[:epochs]]


def test_keys_agree_exactly_as_far_as_the_runs_compute_alike():
    pairs = [
        (run(ROLLBACK), run(BASE_CY)),
        (run(ROLLBACK), run(ROLLBACK, train={"seed": 1})),
        (run(ROLLBACK, train={"eval_every": 1}), run(BASE_CY)),
        (run(ROLLBACK), run({**ROLLBACK, "retained_lr": 0.0001})),
        (run(ROLLBACK), run(FINETUNE)),
    ]
    for a, b in pairs:
        keys_a, keys_b = prefix_keys(a), prefix_keys(b)
        same = sum(1 for x, y in zip(keys_a, keys_b, strict=True) if x == y)
        assert same == shared_epochs(a, b)
        assert keys_a[:same] == keys_b[:same]
    assert shared_epochs(run(ROLLBACK), run({**ROLLBACK, "retained_lr": 0.0001})) == 2


def test_forks_name_the_runs_that_share_each_prefix_and_the_epochs_saved():
    configs = {
        "rollback": run(ROLLBACK),
        "rollback-slow": run({**ROLLBACK, "retained_lr": 0.0001}),
        "control": run(BASE_CY),
        "finetune": run(FINETUNE),
    }
    chains = {name: prefix_keys(config) for name, config in configs.items()}
    # fine-tuning decays its rate after epoch 3, the rollback's periods after their first epoch
    assert [(f.runs, f.epochs) for f in forks(chains)] == [
        (("rollback", "rollback-slow", "control"), 2),
        (("rollback", "rollback-slow", "control", "finetune"), 1),
    ]
    assert epochs_saved(chains, {name: 6 for name in configs}) == (19, 24)
    lines = describe_sharing(configs)
    assert lines[0] == "shared prefixes: 19 epochs to train instead of 24 (5 saved, 21 %)"
    assert lines[1:] == [
        "  epochs 1-2: rollback, rollback-slow, control",
        "  epochs 1-1: rollback, rollback-slow, control, finetune",
    ]
    assert describe_sharing({"finetune": run(FINETUNE)}) == [
        "shared prefixes: none (no two runs plan the same first epoch)"
    ]


@pytest.fixture
def pair(tiny_config):
    schedule = {"periods": 2, "period_epochs": 2}
    return {
        # one thread: the runs in other processes compute what this one does
        "rollback": tiny_config({"name": "incremental_rollback", **schedule}, train={"threads": 1}),
        "control": tiny_config({"name": "base_cy", **schedule}, train={"threads": 1}),
    }


def train_alone(config, folder):
    trainer.train_run(config, folder)
    return metrics(folder)


def train_shared(store, name, config, folder, **kwargs):
    with store.joined(name, config, folder) as prefixes:
        trainer.train_run(config, folder, resume=True, prefixes=prefixes, **kwargs)
    return prefixes


def test_a_run_started_from_a_shared_prefix_ends_bit_for_bit_as_if_it_trained_alone(pair, tmp_path):
    alone = {name: train_alone(config, tmp_path / "alone" / name) for name, config in pair.items()}
    store = PrefixStore(tmp_path / "study" / "prefixes")
    store.want_forks(pair)
    first = train_shared(store, "rollback", pair["rollback"], tmp_path / "study" / "rollback")
    second = train_shared(store, "control", pair["control"], tmp_path / "study" / "control")
    assert first.taken is None
    assert second.taken == {"epochs": 2, "trained_by": "rollback"}
    for name in pair:
        assert metrics(tmp_path / "study" / name) == alone[name]
    assert trained_once(tmp_path / "study" / "rollback", tmp_path / "study" / "control", 2)
    assert not trained_once(tmp_path / "study" / "rollback", tmp_path / "study" / "control", 3)
    assert alone["rollback"][:2] == alone["control"][:2]  # the prefix, for the record
    assert alone["rollback"][2]["loss"] != alone["control"][2]["loss"]  # and they part after it


# A run of the study in its own process, as Ray's trials and the final runs are (torch's random
# state is per process): it prints "paused" after epoch PAUSE and waits for a line on stdin.
RUN = """
import sys, yaml
from pathlib import Path
from study import trainer
from study.config import config_from_dict
from study.prefixes import PrefixStore

config_file, store, name, folder, pause = sys.argv[1:]
config = config_from_dict(yaml.safe_load(open(config_file)))

def on_epoch(record, checkpoint):
    if record["epoch"] == int(pause):
        print("paused", flush=True)
        sys.stdin.readline()

with PrefixStore(store).joined(name, config, Path(folder)) as prefixes:
    trainer.train_run(config, folder, resume=True, prefixes=prefixes, on_epoch=on_epoch)
print("taken", prefixes.taken, flush=True)
"""


@pytest.fixture
def start_run(pair, tmp_path):
    """``start_run(name, pause=0)``: run ``pair[name]`` of one study in its own process."""
    processes = []

    def start(name: str, pause: int = 0) -> subprocess.Popen:
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(pair[name].to_dict()))
        arguments = [str(config), str(tmp_path / "prefixes"), name, str(tmp_path / name), str(pause)]
        process = subprocess.Popen(
            [sys.executable, "-c", RUN, *arguments],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        if pause:
            assert process.stdout.readline().strip() == "paused"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


def wait_until_wanted(tmp_path, process) -> None:
    """Until the second run has asked for the prefix (it then waits for it), however long that takes."""
    while not (tmp_path / "prefixes" / "wanted").exists():
        assert process.poll() is None, "the second run ended without asking for the prefix"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_prefix_nobody_asked_for_in_advance_is_saved_for_the_run_that_waits_for_it(
    pair, tmp_path, start_run
):
    owner = start_run("rollback", pause=1)  # training, one epoch short of the shared period
    control = start_run("control")
    wait_until_wanted(tmp_path, control)
    owner.stdin.write("\n")
    owner.stdin.flush()
    assert owner.wait() == 0 and control.wait() == 0
    assert control.stdout.read().splitlines()[-1] == "taken {'epochs': 2, 'trained_by': 'rollback'}"
    assert trained_once(tmp_path / "rollback", tmp_path / "control", 2)
    for name, config in pair.items():
        assert metrics(tmp_path / name) == train_alone(config, tmp_path / "alone" / name)


@pytest.mark.slow
def test_a_prefix_killed_mid_way_is_trained_by_the_run_waiting_for_it_then_resumed_from(
    pair, tmp_path, start_run
):
    owner = start_run("rollback", pause=1)
    control = start_run("control")
    wait_until_wanted(tmp_path, control)
    owner.kill()  # SIGKILL: its lock goes with the process
    owner.wait()
    assert control.wait() == 0
    assert control.stdout.read().splitlines()[-1] == "taken None"  # it trained the prefix itself
    assert metrics(tmp_path / "control") == train_alone(pair["control"], tmp_path / "alone-control")
    resumed = start_run("rollback")  # the killed run's --resume: from the prefix the control saved
    assert resumed.wait() == 0
    assert resumed.stdout.read().splitlines()[-1] == "taken {'epochs': 2, 'trained_by': 'control'}"
    assert trained_once(tmp_path / "rollback", tmp_path / "control", 2)
    assert metrics(tmp_path / "rollback") == train_alone(pair["rollback"], tmp_path / "alone-rollback")
