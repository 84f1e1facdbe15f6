"""Ray, Optuna and W&B are the sweep extra: training and reports work without them; a sweep says so.

Each test runs a command in a fresh interpreter whose imports of the blocked packages fail, as on a
machine that never installed them (the GPU machines this project is measured on have none of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.study.test_report import write_study

ROOT = Path(__file__).resolve().parents[2]
NEEDS = "python -m study.sweep needs {}: pip install -e '.[sweep]'"
BLOCKER = """
import os, sys

class Hiding:
    \"\"\"A finder of sys.meta_path that finds nothing of the blocked packages, as if not installed.\"\"\"

    blocked = set(os.environ["BLOCKED_PACKAGES"].split(","))

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.blocked:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [Hiding(finder) for finder in sys.meta_path]
"""


def run_without(blocked: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m ARGS`` where importing any of the comma-separated ``blocked`` packages fails."""
    site = tmp_path / "blocker"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": str(site), "BLOCKED_PACKAGES": blocked}
    command = [sys.executable, "-m", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)


def test_the_blocker_blocks(tmp_path):
    result = run_without("ray,optuna,wandb", tmp_path, "optuna")
    assert result.returncode != 0 and "No module named optuna" in result.stderr


@pytest.mark.slow
def test_training_needs_none_of_the_sweep_extra(tmp_path, tiny_config):
    config = tmp_path / "config.yaml"
    schedule = {"name": "incremental_rollback", "period_epochs": 1}
    config.write_text(yaml.safe_dump(tiny_config(schedule).to_dict()))
    out = tmp_path / "run"
    result = run_without("ray,optuna,wandb", tmp_path, "study.train", str(config), "--out", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    "blocked, overrides, message",
    [
        ("ray,optuna,wandb", ["wandb.mode=offline"], NEEDS.format("ray, optuna and wandb")),
        ("ray,optuna", ["wandb.mode=offline"], NEEDS.format("ray and optuna")),
        ("optuna", ["wandb.mode=disabled"], NEEDS.format("optuna")),
        (
            "wandb",
            ["wandb.mode=offline"],
            "W&B logging needs wandb: pip install wandb, or set wandb.mode=disabled",
        ),
    ],
)
def test_a_sweep_without_its_extra_is_a_one_line_error(tmp_path, blocked, overrides, message):
    out = tmp_path / "study"
    sets = [a for o in overrides for a in ("--set", o)]
    command = ["study.sweep", "search_spaces/demo.yaml", "--out", str(out), *sets]
    result = run_without(blocked, tmp_path, *command)
    assert result.returncode == 2 and result.stderr == f"error: {message}\n"
    assert not out.exists()  # nothing made before the check


@pytest.mark.slow
def test_a_report_without_optuna_leaves_out_only_the_importance(tmp_path, tiny_base):
    write_study(tmp_path / "study", tiny_base, optuna_values=(0.25, 0.45, 0.20))
    result = run_without("ray,optuna,wandb", tmp_path, "study.report", str(tmp_path / "study"))
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "study" / "report.md").read_text()
    assert "Not computed: Optuna is not installed here (pip install -e '.[sweep]')." in text
    assert "| finetune |" in text
