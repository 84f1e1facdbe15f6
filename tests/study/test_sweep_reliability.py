"""Sweeps lose nothing: kill -9 and --resume, diverging trials (FAIL in Optuna), bad input, the W&B key.

The studies here run ``python -m study.sweep`` as a child process in a session of its own, with its
own Ray (``RAY_TMPDIR``) and a marker in its environment. Every process of that session (the sweep,
Ray's GCS, raylet, agents and workers) or carrying the marker (W&B's service starts a session of its
own; Ray's agents overwrite their environment with their process title) is killed at the end, so no
stray Ray process outlives a test.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml

import study.run_folder as run_folder
import study.search_space as search_space
import study.sweep.preflight as sweep_preflight
import study.sweep.searcher as sweep_searcher
import study.sweep.trial as sweep_trial
import study.sweep.wandb_mode as sweep_wandb
from study.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
MARKER = "ROLLBACK_STUDY_SWEEP_TEST"
FAKE_KEY = "feedface" * 5  # 40 hex digits, like a real W&B key


def write_space(path: Path, tiny_base, study: str) -> Path:
    """The tiny run, a checkpoint every epoch, and ``study``'s sections (YAML), as a search-space file."""
    path.write_text(yaml.safe_dump(tiny_space(tiny_base) | yaml.safe_load(study)))
    return path


def tiny_space(tiny_base) -> dict:
    data = tiny_base()
    data["train"]["checkpoint_every"] = 1
    return data


# Two seeds of one configuration, one trial at a time, a checkpoint every epoch: killed while the
# second seed trains, the first is finished and the second has checkpoints.
KILLED_STUDY = """
schedule: {name: finetune, epochs: 6, decay_every: 3}
wandb: {mode: disabled}
search:
  seeds: [0, 1]
  params:
    schedule.lr: {loguniform: [5.0e-3, 2.0e-2]}
tune:
  num_samples: 1
  max_concurrent: 1
  resources: {cpu: 1, gpu: 0}
"""
EPOCHS = 6

# finetune trains normally; base_cy's head learning rate makes both of its seeds diverge in epoch 1 of 4.
KEY_STUDY = """
schedule: {name: finetune, epochs: 2}
wandb: {mode: offline, project: rollback-study-tests}
search:
  schedules: [finetune, base_cy]
  seeds: [0, 1]
  when:
    base_cy: {schedule.periods: 2, schedule.period_epochs: 2, schedule.head_lr: 1.0e+6}
tune:
  num_samples: 2
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
"""


# ----------------------------------------------------------------------------- child sweeps


class Sweeps:
    """Runs ``python -m study.sweep`` children with a private Ray, and kills everything they started."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.run_id = uuid.uuid4().hex
        self.sessions: set[int] = set()  # the children's process ids, which are their session ids
        self.ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are limited
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
        self.env = {
            **keep,
            "PYTHONPATH": str(ROOT),
            "RAY_AUTH_MODE": "disabled",
            "RAY_TMPDIR": self.ray_tmp,
            "TMPDIR": str(tmp),
            "WANDB_MODE": "offline",
            **{
                name: str(tmp / name.lower())
                for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")
            },
            MARKER: self.run_id,
        }

    def command(self, space: Path, out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "study.sweep", str(space), "--out", str(out), *extra]

    def start(
        self, space: Path, out: Path, *extra: str, env: dict | None = None, **pipes
    ) -> subprocess.Popen:
        command = self.command(space, out, *extra)
        env = {**self.env, **(env or {})}
        process = subprocess.Popen(command, cwd=self.tmp, env=env, start_new_session=True, **pipes)
        self.sessions.add(process.pid)
        return process

    def run(self, space: Path, out: Path, *extra: str, **env: str) -> subprocess.CompletedProcess:
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        process = self.start(space, out, *extra, env=env, **pipes)
        stdout, stderr = process.communicate(timeout=240)
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    def processes(self) -> list[int]:
        """Live processes in the children's sessions or with the marker (zombies have exited already)."""
        needle = f"{MARKER}={self.run_id}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                state, _, _, session = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:4]
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if state != "Z" and (int(session) in self.sessions or needle in environ):
                found.append(int(entry))
        return found

    def kill_all(self) -> None:
        """SIGKILL every process this run started, until none is left."""
        deadline = time.monotonic() + 600  # a hang guard, far above any load
        while pids := self.processes():
            assert time.monotonic() < deadline, f"processes {pids} survive SIGKILL"
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def close(self) -> None:
        self.kill_all()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@contextlib.contextmanager
def child_sweeps(tmp: Path):
    sweeps = Sweeps(tmp)
    try:
        yield sweeps
    finally:
        sweeps.close()
    assert not sweeps.processes()


def read_table(path: Path) -> list[dict[str, str]]:
    """A CSV that must be whole: a final newline, and every row exactly as many fields as the header."""
    text = path.read_text()
    assert text.endswith("\n"), f"{path} ends mid-line"
    rows = list(csv.DictReader(io.StringIO(text)))
    for row in rows:
        assert None not in row and None not in row.values(), f"{path}: a row of the wrong length: {row}"
    return rows


def tune_snapshot(out: Path) -> dict[str, tuple[str, str | None]]:
    """Ray's last saved experiment state: trial id -> (status, checkpoint of its last result)."""
    states = {}
    for path in (out / "tune").glob("experiment_state-*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):  # Ray is copying it right now
            continue
        for trial, meta in data["trial_data"]:
            trial = json.loads(trial)
            meta = json.loads(meta) if isinstance(meta, str) else meta
            states[trial["trial_id"]] = (trial["status"], meta["last_result"].get("checkpoint_dir_name"))
    return states


def folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run's metrics.csv rows without their empty cells (columns appear as later epochs add them)."""
    rows = read_table(run_dir / "metrics.csv")
    return [{k: v for k, v in row.items() if v != ""} for row in rows]


def optuna_trials(out: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}").get_trials()


# ----------------------------------------------------------------------------- kill -9 and --resume


@pytest.mark.slow
def test_kill_9_then_resume_keeps_finished_trials_and_continues_the_others(tmp_path, tiny_base):
    space = write_space(tmp_path / "killed.yaml", tiny_base, KILLED_STUDY)
    out = tmp_path / "study"
    with child_sweeps(tmp_path) as sweeps:
        log = tmp_path / "first.log"
        with log.open("w") as file:
            process = sweeps.start(space, out, stdout=file, stderr=subprocess.STDOUT)
        # Until Ray's snapshot holds one trial finished and the other with a checkpoint: no clock, the
        # loop ends at that event or fails when the study ends without it.
        while True:
            states = tune_snapshot(out).values()
            finished = [s for s, _ in states if s == "TERMINATED"]
            if finished and any(s == "RUNNING" and c for s, c in states):
                break
            assert process.poll() is None, f"the study ended before it could be killed: {log.read_text()}"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        sweeps.kill_all()  # Ray's raylet, agents and workers outlive a killed driver

        # The tables a kill left behind parse fully (they are only ever replaced whole).
        results = read_table(out / "results.csv")
        read_table(out / "epochs.csv")
        done = [r for r in results if r["status"] == "finished"]
        assert len(done) == 1
        finished_id = done[0]["trial_id"]
        finished_before = folder_state(out / "trials" / finished_id)
        (other_id,) = {p.name for p in (out / "trials").iterdir()} - {finished_id}
        other = out / "trials" / other_id
        saved = [*(other / "checkpoints").glob("epoch-*.pt"), *(out / "tune" / other_id).glob("*/epoch-*.pt")]
        reached = max(run_folder.checkpoint_epoch(p) for p in saved)  # Tune's copy, or one a kill left behind
        assert 1 <= reached < EPOCHS
        metrics_before = metric_rows(other)

        resumed = sweeps.run(space, out, "--resume")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    # Each trial once in results.csv, both finished with every epoch.
    results = read_table(out / "results.csv")
    assert sorted(r["trial_id"] for r in results) == sorted([finished_id, other_id])
    assert all(r["status"] == "finished" and r["epochs"] == str(EPOCHS) for r in results)
    # The finished trial was not run again: its folder is untouched, file for file.
    assert folder_state(out / "trials" / finished_id) == finished_before
    # The other one continued from its newest checkpoint: the epochs up to it are the very rows
    # written before the kill (timings included), and the trainer said where it resumed.
    metrics_after = metric_rows(other)
    assert metrics_after[:reached] == metrics_before[:reached]
    assert [int(r["epoch"]) for r in metrics_after] == list(range(1, EPOCHS + 1))
    assert f"resuming after epoch {reached}" in resumed.stdout
    # epochs.csv holds every epoch of both trials once, as each trial's own metrics.csv has it.
    epochs = read_table(out / "epochs.csv")
    for trial_id in (finished_id, other_id):
        rows = [r for r in epochs if r["trial_id"] == trial_id]
        assert [int(r["epoch"]) for r in rows] == list(range(1, EPOCHS + 1))
        assert [r["loss"] for r in rows] == [r["loss"] for r in metric_rows(out / "trials" / trial_id)]
    # Optuna: still one trial for the one configuration, told the mean over both seeds once.
    (trial,) = optuna_trials(out, "killed")
    assert trial.state.name == "COMPLETE"
    assert trial.value == pytest.approx(sum(float(r["final_val_mAP"]) for r in results) / 2)


@pytest.mark.slow
def test_a_study_moved_while_interrupted_resumes_in_its_new_folder_and_leaves_the_old_one(
    tmp_path, tiny_base
):
    space = write_space(tmp_path / "killed.yaml", tiny_base, KILLED_STUDY)
    out, moved = tmp_path / "study", tmp_path / "elsewhere" / "study"
    with child_sweeps(tmp_path) as sweeps:
        process = sweeps.start(space, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not any(s == "TERMINATED" for s, _ in tune_snapshot(out).values()):  # one trial done
            assert process.poll() is None, "the study ended before it could be killed"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        sweeps.kill_all()
        shutil.copytree(out, moved, symlinks=True)
        (moved / ".lock").unlink(missing_ok=True)
        left = folder_state(out)
        resumed = sweeps.run(space, moved, "--resume")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert folder_state(out) == left  # nothing written into the old folder
    results = read_table(moved / "results.csv")
    assert len(results) == 2 and all(r["status"] == "finished" for r in results)
    (trial,) = optuna_trials(moved, "killed")  # the moved optuna.db was told, not the old one
    assert trial.state.name == "COMPLETE"
    assert [t.state.name for t in optuna_trials(out, "killed")] == ["RUNNING"]


@pytest.mark.slow
def test_sigterm_stops_the_study_as_ctrl_c_does_and_it_resumes(tmp_path, tiny_base):
    space = write_space(tmp_path / "killed.yaml", tiny_base, KILLED_STUDY)
    out = tmp_path / "study"
    with child_sweeps(tmp_path) as sweeps:
        process = sweeps.start(space, out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        while not any(s == "RUNNING" for s, _ in tune_snapshot(out).values()):  # a trial trains
            assert process.poll() is None, "the study ended before it could be stopped"
            time.sleep(0.05)
        process.terminate()  # SIGTERM
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 130, output[-3000:]
        assert "interrupted; continue with: " in output
        assert {r["status"] for r in read_table(out / "results.csv")} <= {"finished", "interrupted"}
        resumed = sweeps.run(space, out, "--resume")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert [r["status"] for r in read_table(out / "results.csv")] == ["finished", "finished"]


# Three configurations (finetune, base_cy, finetune), one seed, one trial at a time.
PLANNED_STUDY = """
schedule: {name: finetune, epochs: 1}
wandb: {mode: disabled}
search:
  schedules: [finetune, base_cy]
  seeds: [0]
  params:
    schedule.lr: {loguniform: [5.0e-3, 2.0e-2]}
  when:
    base_cy: {schedule.periods: 1, schedule.period_epochs: 1}
tune:
  num_samples: 3
  max_concurrent: 1
  resources: {cpu: 1, gpu: 0}
"""

# The sweep, killed (SIGKILL, by itself) the moment Optuna has stored its second configuration.
KILLED_AFTER_ASK = """
import os, signal, sys
import optuna
real_ask, asked = optuna.Study.ask, []
def ask(self, *args, **kwargs):
    trial = real_ask(self, *args, **kwargs)
    asked.append(trial.number)
    if len(asked) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return trial
optuna.Study.ask = ask
from study.sweep.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_kill_after_optuna_stored_a_configuration_loses_no_planned_schedule(tmp_path, tiny_base):
    space = write_space(tmp_path / "planned.yaml", tiny_base, PLANNED_STUDY)
    out = tmp_path / "study"
    with child_sweeps(tmp_path) as sweeps:
        command = [sys.executable, "-c", KILLED_AFTER_ASK, str(space), "--out", str(out)]
        killed = subprocess.Popen(
            command, cwd=tmp_path, env=sweeps.env, start_new_session=True, stdout=subprocess.DEVNULL
        )
        sweeps.sessions.add(killed.pid)
        assert killed.wait(timeout=240) == -signal.SIGKILL
        sweeps.kill_all()
        assert [t.state.name for t in optuna_trials(out, "planned")] == ["COMPLETE", "RUNNING"]

        resumed = sweeps.run(space, out, "--resume")
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    results = read_table(out / "results.csv")
    assert sorted(r["schedule"] for r in results) == ["base_cy", "finetune", "finetune"]
    assert all(r["status"] == "finished" for r in results)
    trials = optuna_trials(out, "planned")
    assert [(t.user_attrs["configuration"], t.params["schedule.name"], t.state.name) for t in trials] == [
        (0, "finetune", "COMPLETE"),
        (1, "base_cy", "COMPLETE"),
        (2, "finetune", "COMPLETE"),
    ]
    assert "3 trials: 3 finished" in resumed.stdout


# ----------------------------------------------------------------------------- a lost Ray node

LOST_NODE_STUDY = """
schedule: {name: finetune, epochs: 4}
wandb: {mode: disabled}
search:
  seeds: [0, 1]
tune:
  num_samples: 1
  max_concurrent: 2
  resources: {cpu: 1, gpu: 0}
"""


@pytest.mark.slow
def test_a_trial_on_a_lost_node_restarts_from_its_checkpoint_and_the_study_finishes(
    tmp_path, tiny_base, monkeypatch
):
    """Two one-CPU nodes of a real Ray cluster on this machine, one trial on each; the second node's
    processes are killed once both trials have a checkpoint. Its trial is restarted on the other node
    from that checkpoint, and the sweep ends with every trial finished, with no --resume."""
    from ray.cluster_utils import Cluster

    space = write_space(tmp_path / "lost.yaml", tiny_base, LOST_NODE_STUDY)
    out = tmp_path / "study"
    with child_sweeps(tmp_path) as sweeps:
        for name in ("RAY_AUTH_MODE", "RAY_TMPDIR"):
            monkeypatch.setenv(name, sweeps.env[name])
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            second = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            log = tmp_path / "sweep.log"
            with log.open("w") as file:
                process = sweeps.start(
                    space, out, "--address", cluster.address, stdout=file, stderr=subprocess.STDOUT
                )
            while True:  # until both trials run with a checkpoint: one of them is on the second node
                states = list(tune_snapshot(out).values())
                if len(states) == 2 and all(s == "RUNNING" and c for s, c in states):
                    break
                assert process.poll() is None, f"the study ended before a node was lost: {log.read_text()}"
                time.sleep(0.05)
            cluster.remove_node(second, allow_graceful=False)
            assert process.wait(timeout=300) == 0, log.read_text()[-4000:]
        finally:
            cluster.shutdown()
    results = read_table(out / "results.csv")
    assert [(r["status"], r["epochs"]) for r in results] == [("finished", "4"), ("finished", "4")]
    assert "resuming after epoch" in log.read_text()
    for row in results:
        assert [int(r["epoch"]) for r in metric_rows(out / row["run_dir"])] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- the W&B key, a divergence


@pytest.fixture(scope="module")
def key_study(tmp_path_factory, tiny_base):
    """Run KEY_STUDY as a child process with WANDB_API_KEY set (W&B offline: nothing is sent)."""
    tmp = tmp_path_factory.mktemp("key")
    space = write_space(tmp / "keyed.yaml", tiny_base, KEY_STUDY)
    out = tmp / "study"
    with child_sweeps(tmp) as sweeps:
        result = sweeps.run(space, out, WANDB_API_KEY=FAKE_KEY)
        # Ray's session logs and W&B's folders too, before the private Ray folder is removed.
        written = [p for folder in (Path(sweeps.ray_tmp), tmp) for p in folder.rglob("*") if p.is_file()]
        holding = [str(p) for p in written if FAKE_KEY.encode() in p.read_bytes()]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, space, result, holding


@pytest.mark.slow
def test_the_wandb_key_is_never_printed_or_written(key_study):
    """Not in the study folder, nor in Ray's session logs (runtime_env_agent.log held it 15 times)."""
    out, _, result, holding = key_study
    assert len(list((out / "wandb").glob("offline-run-*"))) == 4  # W&B did log every trial
    assert FAKE_KEY not in result.stdout and FAKE_KEY not in result.stderr
    assert len([p for p in out.rglob("*") if p.is_file()]) > 20
    assert holding == []


@pytest.mark.slow
def test_a_second_sweep_on_a_study_folder_in_use_is_refused(key_study, tmp_path):
    """The lock is the kernel's (flock): held here as by a running sweep, released however it ends."""
    out, space, _, _ = key_study
    with child_sweeps(tmp_path) as sweeps, sweep_preflight.study_lock(out):
        before = folder_state(out)
        second = sweeps.run(space, out, "--resume")
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"{out} is in use by another python -m study.sweep (process {os.getpid()})" in second.stderr
    assert folder_state(out) == before
    with sweep_preflight.study_lock(out):  # released when its holder let go
        pass


@pytest.mark.slow
def test_diverged_trials_stop_at_once_and_the_study_goes_on(key_study):
    out, _, _, _ = key_study
    results = read_table(out / "results.csv")
    epochs = read_table(out / "epochs.csv")
    diverged = [r for r in results if r["schedule"] == "base_cy"]
    assert len(diverged) == 2
    for row in diverged:
        assert (row["status"], row["epochs"], row["epochs_planned"]) == ("diverged", "0", "4")
        rows = [r for r in epochs if r["trial_id"] == row["trial_id"]]
        assert [(r["epoch"], r["diverged"]) for r in rows] == [("1", "True")]  # no epoch after it
        summary = json.loads((out / row["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "diverged"
    for row in results:
        if row["schedule"] == "finetune":
            assert (row["status"], row["epochs"]) == ("finished", "2")


@pytest.mark.slow
def test_optuna_records_a_diverged_configuration_as_failed(key_study):
    out, _, _, _ = key_study
    results = read_table(out / "results.csv")
    trials = {t.params["schedule.name"]: t for t in optuna_trials(out, "keyed")}
    assert set(trials) == {"finetune", "base_cy"}
    assert trials["base_cy"].state.name == "FAIL" and trials["base_cy"].value is None
    assert trials["finetune"].state.name == "COMPLETE"
    finals = [float(r["final_val_mAP"]) for r in results if r["schedule"] == "finetune"]
    assert trials["finetune"].value == pytest.approx(sum(finals) / len(finals))


@pytest.mark.slow
def test_a_folder_holding_another_study_is_refused_and_left_untouched(key_study, tmp_path):
    out, space, _, _ = key_study
    before = folder_state(out)
    other = tmp_path / "other.yaml"
    data = yaml.safe_load(space.read_text())
    data["tune"]["num_samples"] = 4
    other.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "offline"}
    for extra, message in (
        ([], f"error: {out} already holds the study 'keyed'; pass --resume"),
        (["--resume"], f"error: {out} holds a different study (section tune differs)"),
    ):
        command = [sys.executable, "-m", "study.sweep", str(other), "--out", str(out), *extra]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
        assert result.returncode == 2
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1
    assert folder_state(out) == before


# ----------------------------------------------------------------------------- without Ray


def seeds_space(tiny_base, num_samples: int, schedules: list[str] | None = None):
    data = tiny_space(tiny_base)
    data |= {
        "schedule": {"name": "finetune", "epochs": 2},
        "search": {"seeds": [0, 1], "params": {"schedule.lr": {"loguniform": [1.0e-3, 1.0e-1]}}},
        "tune": {"num_samples": num_samples},
    }
    if schedules:
        data["search"]["schedules"] = schedules
    return search_space.parse_search_space(data, "seeds")


def test_optuna_learns_fail_complete_or_pruned_once_every_seed_of_a_configuration_ended(tmp_path, tiny_base):
    """FAIL for a diverged or errored seed; the mean when all finished; PRUNED (with the mean at every
    validated epoch as intermediate values) when ASHA stopped a seed early or none reported a value."""
    space = seeds_space(tiny_base, 6)
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    ok, diverged = {"val_mAP": 0.25, "epoch": 2, "epochs_planned": 2}, {"val_mAP": 0.0, "diverged": True}
    stopped = {"val_mAP": 0.5, "epoch": 1, "epochs_planned": 2}
    outcomes = {  # configuration -> how each of its two seeds ends
        "both_fine": [{"result": ok}, {"result": {**ok, "val_mAP": 0.75}}],
        "second_diverged": [{"result": ok}, {"result": diverged}],
        "first_diverged": [{"result": diverged}, {"result": ok}],
        "errored": [{"error": True}, {"result": ok}],
        "asha_stopped": [{"result": stopped}, {"result": ok}],
        "no_value": [{}, {}],
    }
    for name, ends in outcomes.items():
        ids = [f"{name}-{seed}" for seed in range(2)]
        configs = [searcher.suggest(trial_id) for trial_id in ids]
        assert [c["train.seed"] for c in configs] == [0, 1]
        assert configs[0]["schedule.lr"] == configs[1]["schedule.lr"]  # one configuration, two seeds
        if name == "asha_stopped":  # period 1 ends at epoch 1 for both seeds; only the second reaches 2
            for trial_id, value in zip(ids, (0.5, 0.1), strict=True):
                searcher.on_trial_result(trial_id, {"val_mAP": value, "validated": True, "epoch": 1})
            searcher.on_trial_result(ids[1], {"val_mAP": 0.25, "validated": True, "epoch": 2})
        for trial_id, end in zip(ids, ends, strict=True):
            searcher.on_trial_complete(trial_id, **end)
    assert searcher.suggest("one-too-many") == sweep_searcher.Searcher.FINISHED
    trials = optuna_trials(tmp_path, "seeds")
    assert [(t.state.name, t.value) for t in trials] == [
        ("COMPLETE", 0.5),
        ("FAIL", None),
        ("FAIL", None),
        ("FAIL", None),
        ("PRUNED", 0.25),  # Optuna gives a pruned trial its last intermediate value
        ("PRUNED", None),
    ]
    assert trials[4].intermediate_values == {1: pytest.approx(0.3), 2: 0.25}
    assert trials[4].user_attrs["val_mAP seed 1"] == {"1": 0.1, "2": 0.25}  # each seed's curve
    assert [t.user_attrs["configuration"] for t in trials] == list(range(6))


def test_the_validation_of_a_seed_asha_stops_counts_though_tune_gives_it_only_at_completion(
    tmp_path, tiny_base
):
    space = seeds_space(tiny_base, 1)
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    for seed in range(2):  # one configuration, its two seeds
        searcher.suggest(f"seed-{seed}")
    searcher.on_trial_result("seed-0", {"val_mAP": 0.5, "validated": True, "epoch": 1})
    # ASHA stops seed 1 at its first result: Tune hands that result to on_trial_complete only
    stopped = {"val_mAP": 0.1, "validated": True, "epoch": 1, "epochs_planned": 2}
    searcher.on_trial_complete("seed-1", result=stopped)
    searcher.on_trial_result("seed-0", {"val_mAP": 0.25, "validated": True, "epoch": 2})
    searcher.on_trial_complete("seed-0", result={"val_mAP": 0.25, "epoch": 2, "epochs_planned": 2})
    (trial,) = optuna_trials(tmp_path, "seeds")
    assert trial.state.name == "PRUNED"
    assert trial.intermediate_values == {1: pytest.approx(0.3), 2: 0.25}


def test_a_paired_study_runs_every_schedule_at_each_sampled_value_set(tmp_path, tiny_base):
    space = seeds_space(tiny_base, 4, schedules=["finetune", "base_cy"])
    space = dataclasses.replace(space, paired=True)
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    configs = [searcher.suggest(f"t{i}") for i in range(8)]  # 4 configurations x 2 seeds
    first = configs[::2]
    assert [c["schedule.name"] for c in first] == ["finetune", "base_cy"] * 2
    assert (
        first[0]["schedule.lr"]
        == first[1]["schedule.lr"]
        != first[2]["schedule.lr"]
        == first[3]["schedule.lr"]
    )


def test_paired_needs_a_multiple_of_the_schedules(tiny_base):
    data = tiny_space(tiny_base)
    data |= {"search": {"schedules": ["finetune", "base_cy"], "paired": True}, "tune": {"num_samples": 3}}
    with pytest.raises(UserError, match=r"tune\.num_samples=3 must be a multiple of the 2 schedules"):
        search_space.parse_search_space(data, "odd")


def test_a_resumed_searcher_adopts_the_optuna_trials_its_snapshot_never_saw(tmp_path, tiny_base):
    """Killed after Optuna stored a configuration but before Tune's snapshot: the resumed study runs
    that configuration (same values, same Optuna trial) and not a new one, and tells nothing twice."""
    space = seeds_space(tiny_base, 3, schedules=["finetune", "base_cy"])
    searcher = sweep_searcher.make_searcher(space, tmp_path)
    first = [searcher.suggest(f"a{i}") for i in range(2)]
    for i in range(2):
        searcher.on_trial_complete(f"a{i}", {"val_mAP": 0.5, "epoch": 2, "epochs_planned": 2})
    snapshot = tmp_path / "searcher.pkl"
    searcher.save(str(snapshot))  # Tune's last snapshot: configuration 0 done, 1 not asked yet
    lost = searcher.suggest("b0")  # configuration 1 asked (Optuna holds it RUNNING), then a kill

    resumed = pickle.loads(pickle.dumps(sweep_searcher.make_searcher(space, tmp_path)))  # as in tuner.pkl
    resumed.restore(str(snapshot))
    again = [resumed.suggest(f"c{i}") for i in range(2)]
    assert {k: v for k, v in again[0].items() if k != "train.seed"} == {
        k: v for k, v in lost.items() if k != "train.seed"
    }
    assert again[0]["schedule.name"] == "base_cy" and [c["train.seed"] for c in again] == [0, 1]
    for i in range(2):
        resumed.on_trial_complete(f"c{i}", {"val_mAP": 0.25, "epoch": 2, "epochs_planned": 2})
    last = [resumed.suggest(f"d{i}") for i in range(2)]
    assert last[0]["schedule.name"] == "finetune" and last[0]["__configuration__"] == 2
    assert resumed.suggest("e") == sweep_searcher.Searcher.FINISHED
    trials = optuna_trials(tmp_path, "seeds")
    assert [(t.user_attrs["configuration"], t.state.name) for t in trials] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "RUNNING"),
    ]
    assert first[0]["schedule.name"] == "finetune" and trials[1].value == 0.25
    # Telling a configuration again (Tune repeats a completion its snapshot missed) changes nothing.
    resumed.on_trial_complete("c1", {"val_mAP": 0.9, "epoch": 2, "epochs_planned": 2})
    assert optuna_trials(tmp_path, "seeds")[1].value == 0.25


class FakeTune:
    """Stands in for ray.tune in the reporter: records each report's epoch and checkpoint files."""

    def __init__(self):
        self.reports = []

    def report(self, metrics, checkpoint=None):
        files = sorted(p.name for p in Path(checkpoint.path).iterdir()) if checkpoint else None
        self.reports.append((metrics["epoch"], metrics["val_mAP"], files))


@pytest.mark.parametrize(
    ("tune_epoch", "reported"),
    [(0, [1, 2, 3]), (1, [2, 3]), (3, [])],
    ids=["tune-from-scratch", "tune-one-behind", "tune-up-to-date"],
)
def test_a_resumed_trial_reports_the_epochs_tune_missed(tmp_path, monkeypatch, tune_epoch, reported):
    """Killed between the trainer's checkpoint and Tune's snapshot: the epochs between are reported again."""
    import ray.tune

    from schedules import build_schedule

    fake = FakeTune()
    monkeypatch.setattr(ray.tune, "report", fake.report)
    plan = build_schedule({"name": "finetune", "epochs": 4}).plan()
    run_dir = tmp_path / "trial"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("x")
    rows = [
        {"epoch": e, "period": 1, "loss": 1.0 / e, "val_mAP": e / 10 if e != 2 else ""} for e in (1, 2, 3, 4)
    ]
    with (run_dir / "metrics.csv").open("w") as file:  # epoch 4 trained, but no checkpoint of it yet
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    history = [{k: v for k, v in row.items() if v != ""} for row in rows]
    torch.save({"epoch": 3, "history": history[:3]}, run_dir / "checkpoints" / "epoch-0003-mid.pt")
    if tune_epoch:  # what restore_from_tune copies in from Tune's checkpoint
        tunes = run_dir / "checkpoints" / f"epoch-{tune_epoch:04d}-mid.pt"
        torch.save({"epoch": tune_epoch, "history": history[:tune_epoch]}, tunes)

    reporter = sweep_trial.EpochReporter(plan, search_space.TuneSettings(metric="val_mAP"), run_dir)
    reporter.catch_up(tune_epoch)

    assert [epoch for epoch, _, _ in fake.reports] == reported
    # The metric is carried forward over epoch 2 (not validated) from the epochs before it.
    assert [value for epoch, value, _ in fake.reports if epoch == 2] == [0.1] * (2 in reported)
    if reported:  # the last one carries the checkpoint the trainer resumes from
        assert fake.reports[-1][2] == ["config.yaml", "epoch-0003-mid.pt", "metrics.csv"]
        assert all(files is None for _, _, files in fake.reports[:-1])
    assert run_folder.checkpoint_epoch(run_folder.newest_checkpoint(run_dir)[0]) == 3
    assert reporter.epoch == 3 and reporter.last == 0.3


def test_restore_from_tune_returns_the_epoch_it_restores(tmp_path):
    from ray.tune import Checkpoint

    saved = tmp_path / "tune-checkpoint"
    saved.mkdir()
    for name, data in (("epoch-0002-mid.pt", b"w"), ("config.yaml", b"c"), ("metrics.csv", b"m")):
        (saved / name).write_bytes(data)
    run_dir = tmp_path / "trial"
    assert sweep_trial.restore_from_tune(None, run_dir) == 0
    assert sweep_trial.restore_from_tune(Checkpoint.from_directory(str(saved)), run_dir) == 2
    assert (run_dir / "checkpoints" / "epoch-0002-mid.pt").read_bytes() == b"w"
    assert (run_dir / "metrics.csv").read_text() == "m"


def test_the_offline_notice_says_why_w_and_b_is_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "offline")
    mode = sweep_wandb.wandb_mode("auto")
    assert mode == "offline"
    assert sweep_wandb.wandb_notice("auto", mode, tmp_path).startswith(
        "W&B: WANDB_MODE=offline; logging offline"
    )
    monkeypatch.delenv("WANDB_MODE")
    assert (
        sweep_wandb.wandb_mode("auto") == "online"
        and sweep_wandb.wandb_notice("auto", "online", tmp_path) is None
    )
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    assert sweep_wandb.wandb_notice("auto", sweep_wandb.wandb_mode("auto"), tmp_path).startswith(
        "W&B: no API key configured; logging offline"
    )
    assert sweep_wandb.wandb_notice("offline", "offline", tmp_path) is None  # asked for: nothing to explain


def test_a_key_without_a_route_to_the_wandb_server_logs_offline_with_one_notice(monkeypatch, tmp_path):
    with socket.socket() as probe:  # a port nothing listens on: the connection is refused at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    mode, notice = sweep_wandb.online_or_offline(sweep_wandb.wandb_mode("auto"), tmp_path)
    assert mode == "offline"
    assert notice.startswith(f"W&B: the server 127.0.0.1:{port} is unreachable (")
    assert notice.endswith(f"logging offline to {tmp_path}/wandb (upload later with `wandb sync`)")
    assert sweep_wandb.online_or_offline("disabled", tmp_path) == ("disabled", None)


def test_a_search_space_never_expands_the_wandb_key(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    with pytest.raises(UserError) as error:
        search_space.expand_env({"wandb": {"tags": ["${WANDB_API_KEY}"]}})
    message = str(error.value)
    assert message.startswith("wandb.tags[0] uses ${WANDB_API_KEY}, a secret") and FAKE_KEY not in message
