"""Interrupted and diverging runs lose nothing: kill -9 and resume, truncated checkpoints, NaN losses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import study.trainer as trainer
from study.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCHEDULE = {"name": "incremental_rollback", "period_epochs": 2, "periods": 2}


def train_command(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study.train", str(config), "--out", str(out), *extra]


def final_metrics(out: Path) -> tuple:
    summary = json.loads((out / "summary.json").read_text())
    return summary["epochs"], summary["final_loss"], summary["final_val_mAP"]


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_config):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(SCHEDULE, train={"checkpoint_every": 1}).to_dict()))
    subprocess.run(train_command(config, tmp_path / "whole"), check=True, capture_output=True, cwd=ROOT)

    interrupted = tmp_path / "killed"
    process = subprocess.Popen(
        train_command(config, interrupted), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # Kill it as soon as the epoch-3 checkpoint appears, however long that takes on this machine; the
    # bound only stops a hung run from hanging the test suite.
    hung = time.monotonic() + 3600
    while not list((interrupted / "checkpoints").glob("epoch-0003*.pt")) and process.poll() is None:
        assert time.monotonic() < hung, "the run wrote no checkpoint of epoch 3 in an hour"
        time.sleep(0.01)
    process.kill()  # SIGKILL; nothing when the run already ended
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before its epoch-3 checkpoint appeared"
    assert not (interrupted / "summary.json").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(
        train_command(config, interrupted, "--resume"), capture_output=True, text=True, cwd=ROOT
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 3" in resumed.stdout
    assert final_metrics(interrupted) == final_metrics(tmp_path / "whole")


@pytest.mark.slow
def test_a_truncated_checkpoint_is_skipped_for_the_previous_one(tmp_path, tiny_config, capsys, train_until):
    config = tiny_config(SCHEDULE)
    whole = trainer.train_run(config, tmp_path / "whole")

    out = tmp_path / "run"
    train_until(config, out, 4)
    newest = out / "checkpoints" / "epoch-0004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # as if the machine died mid-write without atomic rename
    resumed = trainer.train_run(config, out, resume=True)
    output = capsys.readouterr().out
    assert "skipping unreadable checkpoint" in output and "resuming after epoch 2" in output
    assert (resumed["final_loss"], resumed["final_val_mAP"]) == (whole["final_loss"], whole["final_val_mAP"])


def test_a_run_ended_in_its_last_on_epoch_keeps_its_summary(tmp_path, tiny_config):
    """A sweep's scheduler (ASHA) may stop a trial at its last report: that on_epoch never returns."""
    out = tmp_path / "run"

    class Stopped(Exception):
        pass

    def stop_at_the_last_report(record, checkpoint):
        assert (out / "summary.json").exists() == (record["epoch"] == 2)
        if record["epoch"] == 2:
            raise Stopped

    config = tiny_config({"name": "finetune", "epochs": 2})
    with pytest.raises(Stopped):
        trainer.train_run(config, out, on_epoch=stop_at_the_last_report)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["status"], summary["epochs"]) == ("finished", 2)


@pytest.mark.slow
def test_a_diverging_run_stops_with_status_diverged(tmp_path, tiny_config):
    config = tmp_path / "config.yaml"
    schedule = {"name": "finetune", "epochs": 3, "lr": 1.0e6, "head_lr": 1.0e6}
    config.write_text(yaml.safe_dump(tiny_config(schedule).to_dict()))
    result = subprocess.run(train_command(config, tmp_path / "run"), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert "training loss became" in result.stderr and "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs"] == 0


def test_resume_refuses_a_folder_of_a_different_run(tmp_path, tiny_config):
    trainer.train_run(tiny_config({"name": "finetune", "epochs": 1}), tmp_path / "run")
    with pytest.raises(UserError, match="holds a run with a different config"):
        trainer.train_run(tiny_config({"name": "finetune", "epochs": 2}), tmp_path / "run", resume=True)
