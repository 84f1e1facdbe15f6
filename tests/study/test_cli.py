"""The command-line tools as a user runs them: plan, train, and the README's plug-in example."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from schedules import GROUPS, Period, StepDecay

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def write_config(tmp_path: Path, tiny_config, schedule: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(schedule).to_dict()))
    return path


@pytest.mark.slow
def test_plan_csv_has_one_row_per_epoch_and_group(tmp_path, tiny_config):
    config = write_config(tmp_path, tiny_config, {"name": "incremental_rollback"})
    result = run(
        "study.plan", str(config), "--set", "schedule.period_epochs=2", "--csv", str(tmp_path / "p.csv")
    )
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "p.csv") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["epoch", "period", "group", "lr", "frozen", "reset"]
    assert len(rows) == 8 * len(GROUPS)
    by_key = {(int(r["epoch"]), r["group"]): r for r in rows}
    assert float(by_key[1, "head"]["lr"]) == 0.1 and by_key[1, "B5"]["reset"] == "none"
    assert float(by_key[3, "B1"]["lr"]) == 0.001 and by_key[3, "B1"]["reset"] == "none"
    assert by_key[3, "B2"]["reset"] == "pretrained" and by_key[3, "head"]["reset"] == "none"
    assert by_key[4, "B2"]["reset"] == "none" and by_key[7, "B4"]["reset"] == "pretrained"
    assert {r["frozen"] for r in rows} == {"0"}


@pytest.mark.slow
def test_plan_marks_frozen_groups(tmp_path, tiny_config):
    config = write_config(tmp_path, tiny_config, {"name": "fc_warmup", "warmup_epochs": 1, "epochs": 1})
    result = run("study.plan", str(config), "--csv", str(tmp_path / "p.csv"))
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "p.csv") as file:
        rows = [r for r in csv.DictReader(file) if r["epoch"] == "1"]
    assert {r["group"]: r["frozen"] for r in rows} == {**dict.fromkeys(GROUPS[:5], "1"), "head": "0"}


def test_plan_says_which_boundaries_are_conditional_and_shows_the_maximum_plan():
    from schedules import build_schedule
    from study.plan import format_plan

    spec = {"name": "plateau_rollback", "period_epochs": 4, "periods": 2, "patience": 1}
    spec["lr_warmup_epochs"] = 1
    lines = format_plan(build_schedule(spec)).splitlines()
    assert lines[1] == (
        "periods 1, 2 may end early on a plateau (their boundaries are conditional; the later periods "
        "then start sooner): this is the maximum plan, 8 epochs"
    )
    table = lines[3:]
    assert len(table) == 8
    marked = [int(line.split()[0]) for line in table if "may end from here on" in line]
    assert marked == [2, 6]  # after patience + 1 epochs of each period
    assert "loss not improved by more than 0 for 1 epochs" in table[1]
    assert table[0].split()[2:8] == ["0.005"] * 5 + ["0.05"]  # re-warmed: half the rate in epoch 1
    assert "may end" not in format_plan(build_schedule({"name": "incremental_rollback"}))


@pytest.mark.slow
def test_plan_names_the_regularizers_that_are_on(tmp_path, tiny_config):
    config = write_config(tmp_path, tiny_config, {"name": "finetune", "epochs": 1})
    result = run("study.plan", str(config))
    assert result.returncode == 0 and "L2-SP" not in result.stdout and "EMA" not in result.stdout
    regularized = ["--set", "train.l2sp_alpha=0.01", "--set", "train.ema_decay=0.999"]
    result = run("study.plan", str(config), *regularized)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == [
        "L2-SP: every block pulled toward its pre-trained weights, alpha 0.01 (not the head)",
        "EMA: validation evaluates a moving average of the weights, decay 0.999 (reset groups restart it)",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["schedule.name=incremental_rolback"], "unknown schedule 'incremental_rolback' (did you mean"),
        (
            ["schedule.name=block_order", "schedule.retained=[[], [B6]]"],
            "retained[1] names unknown block 'B6'",
        ),
        (["schedule.period_epochs=0"], "requires positive period_epochs"),
        (["schedule.lr=-0.01"], "requires positive lr"),
        (["train.batch_sise=8"], "unknown config key 'train.batch_sise' (did you mean 'train.batch_size'?)"),
        (["model.backbone=resnet49"], "unknown backbone 'resnet49'"),
        (["model.weights=/nonexistent/w.pth"], "model.weights '/nonexistent/w.pth' is not a file"),
        (["train.batch_size=0"], "train.batch_size must be positive"),
    ],
)
def test_bad_input_gives_one_line_and_exit_status_2(tmp_path, tiny_config, overrides, message):
    config = write_config(tmp_path, tiny_config, {"name": "incremental_rollback", "period_epochs": 1})
    args = [a for o in overrides for a in ("--set", o)]
    result = run("study.train", str(config), "--out", str(tmp_path / "run"), *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.slow
def test_unreadable_weights_file_is_a_user_error(tmp_path, tiny_config):
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    config = write_config(tmp_path, tiny_config, {"name": "finetune", "epochs": 1})
    result = run("study.train", str(config), "--out", str(tmp_path / "run"), "--set", f"model.weights={bad}")
    assert result.returncode == 2 and "cannot read weights file" in result.stderr


@pytest.mark.slow
def test_readme_plugin_example_runs_through_study_train(tmp_path, tiny_config):
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- plugin-example: (\S+) -->\n```python\n(.*?)```", readme, re.S)
    assert match, "README lost its plug-in example"
    (tmp_path / match.group(1)).write_text(match.group(2))
    config = write_config(tmp_path, tiny_config, {"name": "my_schedules:TopRollback", "epochs": 1})
    out = tmp_path / "run"
    result = run("study.train", str(config), "--out", str(out), env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schedule"] == "my_schedules:TopRollback" and summary["epochs"] == 2
    with open(out / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["period"] for r in rows] == ["1", "2"] and rows[1]["val_mAP"]


@pytest.mark.slow
def test_switching_the_schedule_drops_the_files_parameters_the_new_one_lacks():
    result = run("study.plan", "search_spaces/demo.yaml", "--set", "schedule.name=finetune")
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "note: schedule 'finetune' has no parameter periods, period_epochs; dropped from the config "
        "(set its own with --set schedule.KEY=VALUE)\n"
    )
    assert result.stdout.startswith("schedule finetune: {'epochs': 40,")
    # A parameter given on the command line is the user's: still refused when the schedule lacks it.
    result = run(
        "study.plan",
        "search_spaces/demo.yaml",
        "--set",
        "schedule.name=finetune",
        "--set",
        "schedule.periods=2",
    )
    assert result.returncode == 2 and "schedule 'finetune' has no parameter 'periods'" in result.stderr


def test_readme_gives_periods_keywords_and_default_decay():
    readme = (ROOT / "README.md").read_text()
    signature = re.search(r"<!-- period-keywords -->\n`Period\((.*?)\)`", readme)
    assert signature, "README lost Period's keywords"
    documented = [part.split("=")[0].strip() for part in signature.group(1).split(", ")]
    assert documented == [field.name for field in dataclasses.fields(Period)]
    assert Period.__dataclass_fields__["decay"].default == StepDecay(every=20, gamma=0.1)
    assert "multiplies the rates by 0.1 every 20 epochs of the period" in readme
