"""Every kind of bad input: one line naming the problem and the fix, exit status 2, nothing created."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
import yaml

import study.sweep.cli as sweep_cli
import study.sweep.preflight as sweep_preflight
import study.sweep.tuner as sweep_tuner
from study.config import ModelConfig
from study.errors import UserError
from study.models import build_model

ROOT = Path(__file__).resolve().parents[2]


def train(config: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [a for o in overrides for a in ("--set", o)]
    command = [sys.executable, "-m", "study.train", str(config), "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def assert_user_error(result: subprocess.CompletedProcess, message: str, out: Path) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert not out.exists(), "bad input must not create the run folder"


@pytest.fixture
def config_file(tmp_path, tiny_config) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config({"name": "finetune", "epochs": 1}).to_dict()))
    return path


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("model: {backbone: resnet50\nschedule: [")
    assert_user_error(train(path, tmp_path / "run"), "invalid YAML in", tmp_path / "run")


def test_missing_config_file(tmp_path):
    assert_user_error(train(tmp_path / "nope.yaml", tmp_path / "run"), "cannot read config", tmp_path / "run")


def test_unknown_section_suggests_the_closest(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("schedul: {name: finetune}\n")
    result = train(path, tmp_path / "run")
    assert_user_error(result, "unknown config section 'schedul' (did you mean 'schedule'?)", tmp_path / "run")


@pytest.mark.slow
def test_custom_schedule_that_does_not_import(config_file, tmp_path):
    result = train(config_file, tmp_path / "run", "schedule.name=not_a_module_x:Mine")
    assert_user_error(result, "cannot import schedule module 'not_a_module_x'", tmp_path / "run")


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, message",
    [
        ("data.root=/nonexistent/market", "data set root '/nonexistent/market' does not exist"),
        ("data.format=market9000", "unknown data set format 'market9000'"),
        ("train.device=cuda:0", None),
    ],
)
def test_bad_data_and_device(config_file, tmp_path, override, message):
    result = train(config_file, tmp_path / "run", override)
    if message is None:  # CUDA may exist on a developer's machine; here it must not
        if torch.cuda.is_available():
            pytest.skip("CUDA is available")
        message = "CUDA is not available here"
    assert_user_error(result, message, tmp_path / "run")


@pytest.mark.slow
def test_wrong_layout_names_the_missing_folders(config_file, tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    result = train(config_file, tmp_path / "run", f"data.root={tmp_path / 'data'}")
    assert_user_error(result, "is not in the Market-1501 layout", tmp_path / "run")


@pytest.mark.slow
def test_weights_file_that_does_not_fit_the_backbone(config_file, tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    result = train(config_file, tmp_path / "run", f"model.weights={weights}")
    assert_user_error(result, "do not fit the backbone", tmp_path / "run")


def test_packaged_weights_are_mobilenet_only():
    with pytest.raises(UserError, match="holds MobileNetV2 weights only, not resnet50"):
        build_model(ModelConfig(backbone="resnet50", weights="packaged"), num_classes=3)


def test_downloading_weights_offline_says_how_to_supply_a_file(monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(
        UserError, match=r"cannot download ImageNet weights for resnet18.*model.weights=/path"
    ):
        build_model(ModelConfig(backbone="resnet18", weights="imagenet"), num_classes=3)


def test_a_local_weights_file_is_loaded_exactly(tmp_path):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    model = build_model(ModelConfig(backbone="resnet18", weights=str(tmp_path / "r18.pth")), num_classes=3)
    assert torch.equal(model.blocks["B2"][0].conv1.weight, source.layer1[0].conv1.weight)
    assert torch.equal(model.blocks["B1"][1].running_var, source.bn1.running_var)


@pytest.mark.slow
def test_bad_input_leaves_an_existing_run_untouched(config_file, tmp_path, tiny_config):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("epoch\n1\n")
    result = train(config_file, out)
    assert result.returncode == 2 and "already holds a run; pass --resume" in result.stderr
    assert (out / "metrics.csv").read_text() == "epoch\n1\n"
    assert os.listdir(out) == ["metrics.csv"]


# ----------------------------------------------------------------------------- where results go


def run_cli(module: str, *args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)


def assert_one_line(result: subprocess.CompletedProcess, *messages: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("keep me\n")
    return path


def assert_nothing_created(tmp_path: Path, *kept: str) -> None:
    """tmp_path holds what the test put there (``kept``, and a_file unchanged), nothing else."""
    if (tmp_path / "a_file").exists():
        assert (tmp_path / "a_file").read_text() == "keep me\n"
        kept = (*kept, "a_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


# Bad result folders, made from tmp_path, and their messages. /sys refuses new files even to root,
# for whom permission bits (chmod 0o555) stop nothing.
BAD_FOLDERS = {
    "existing-file": (a_file, "is a file, not a folder"),
    "under-a-file": (lambda tmp: a_file(tmp) / "run", "is a file; choose another --out"),
    "unwritable": (lambda tmp: Path("/sys/rollback-study-run"), "cannot write into '/sys'"),
    "name-too-long": (lambda tmp: tmp / ("x" * 256) / "run", "holds a name of 256 bytes, over the 255"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_train_out_that_cannot_be_a_folder_is_refused_before_the_data_loads(config_file, tmp_path, case):
    make, message = BAD_FOLDERS[case]
    out = make(tmp_path)
    # The data set root does not exist: had the data been read first, that would be the error.
    result = train(config_file, out, "data.root=/nonexistent/market")
    assert_one_line(result, f"--out {str(out)!r}", message)
    assert_nothing_created(tmp_path, "config.yaml")


@pytest.fixture
def space_file(tmp_path, tiny_base) -> Path:
    """A tiny search space: one configuration of one seed, W&B disabled."""
    path = tmp_path / "space.yaml"
    data = {
        **tiny_base(),
        "schedule": {"name": "finetune", "epochs": 1},
        "wandb": {"mode": "disabled"},
        "tune": {"num_samples": 1, "resources": {"cpu": 1, "gpu": 0}},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def sweep(space: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m study.sweep`` joining no Ray of this machine: no RAY_ADDRESS, a Ray folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WANDB_"))}
    ray_tmp = Path(f"/tmp/ray-bad-input-{os.getpid()}")  # short: Ray's socket paths are limited
    env |= {"RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "WANDB_MODE": "disabled"}
    try:
        return run_cli("study.sweep", space, "--out", out, *args, env=env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_sweep_out_that_cannot_be_a_folder_is_refused(space_file, tmp_path, case):
    make, message = BAD_FOLDERS[case]
    out = make(tmp_path)
    assert_one_line(sweep(space_file, out), f"--out {str(out)!r}", message)
    assert_nothing_created(tmp_path, "space.yaml")


BAD_FILES = {
    "a-folder": (lambda tmp: tmp, "is a folder; give a file name"),
    "under-a-file": (lambda tmp: a_file(tmp) / "x.png", "is a file; choose another"),
    "unwritable": (lambda tmp: Path("/sys/rollback-study.png"), "cannot write into '/sys'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FILES)
def test_evaluate_show_out_is_checked_before_the_checkpoint_loads(tmp_path, case):
    make, message = BAD_FILES[case]
    picture = make(tmp_path)
    missing = tmp_path / "missing.pt"  # had the checkpoint been read first, that would be the error
    result = run_cli("study.evaluate", missing, "--data", tmp_path, "--show", "0", "--show-out", picture)
    assert_one_line(result, f"--show-out {str(picture)!r}", message)
    assert_nothing_created(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ranks", "ranks.txt", "ranks.pdf"])
def test_evaluate_show_out_needs_an_image_extension(tmp_path, name):
    picture = tmp_path / name
    result = run_cli(
        "study.evaluate", tmp_path / "missing.pt", "--data", tmp_path, "--show", "0", "--show-out", picture
    )
    assert_one_line(
        result, f"--show-out {str(picture)!r} needs a file name ending in .png, .jpg, .jpeg, .bmp"
    )


@pytest.mark.parametrize("case", BAD_FILES)
def test_plan_csv_is_checked_before_the_plan_is_printed(config_file, tmp_path, case):
    make, message = BAD_FILES[case]
    target = make(tmp_path)
    result = run_cli("study.plan", config_file, "--csv", target)
    assert_one_line(result, f"--csv {str(target)!r}", message)
    assert result.stdout == ""
    assert_nothing_created(tmp_path, "config.yaml")


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.weight_decay=.nan", "train.weight_decay must be a finite number, got nan"),
        ("train.momentum=.inf", "train.momentum must be a finite number, got inf"),
        ("data.val_identities=.nan", "data.val_identities must be a finite number, got nan"),
        ("model.dropout=-.inf", "model.dropout must be a finite number, got -inf"),
        ("schedule.lr=.inf", "schedule.lr must be a finite number, got inf"),
        ("schedule.gamma=.nan", "schedule.gamma must be a finite number, got nan"),
        ("schedule.head_lr=1" + "0" * 400, "schedule.head_lr must be a finite number"),
        ("train.seed=99999999999999999999", "train.seed must be between 0 and 4294967295"),
        ("train.seed=-1", "train.seed must be between 0 and 4294967295"),
        ("data.split_seed=4294967296", "data.split_seed must be between 0 and 4294967295"),
        ("train.batch_size=99999999999999999999", "train.batch_size must be an integer between"),
        ("schedule.epochs=99999999999999999999", "schedule.epochs must be an integer between"),
    ],
)
def test_numbers_must_be_finite_and_fit(config_file, override, message):
    from study.config import load_config

    with pytest.raises(UserError) as error:
        _ = load_config(config_file, [override]).built_schedule  # as study.train and study.plan do
    assert message in str(error.value)


def test_the_schedule_of_a_config_is_built_once(config_file):
    from study.config import load_config

    config = load_config(config_file)
    assert config.built_schedule is config.built_schedule
    assert (config.built_schedule.name, config.built_schedule.total_epochs) == ("finetune", 1)
    assert "built_schedule" not in config.to_dict()


def test_the_largest_seed_is_one_numpy_and_torch_accept_everywhere_the_trainer_uses_it():
    import numpy as np

    from study.config import SEED_MAX

    np.random.RandomState(SEED_MAX)
    with pytest.raises(ValueError):
        np.random.RandomState(SEED_MAX + 1)  # why the bound is 2**32 - 1
    torch.Generator().manual_seed(SEED_MAX)  # train.seed (trainer._seed_everything)
    torch.Generator().manual_seed(SEED_MAX * 100_003 + 10_000)  # batch order of epoch 10000
    torch.Generator().manual_seed(SEED_MAX * 1000 + 1000)  # re-initialisation in period 1000


def test_a_nan_setting_is_one_line_from_the_cli(config_file, tmp_path):
    result = train(config_file, tmp_path / "run", "train.weight_decay=.nan")
    assert_user_error(result, "train.weight_decay must be a finite number, got nan", tmp_path / "run")


@pytest.mark.parametrize(
    "section, message",
    [
        ({"tune": {"seed": 2**32}}, "tune.seed must be between 0 and 4294967295"),
        ({"search": {"seeds": [0, 2**40]}}, "search.seeds must be between 0 and 4294967295"),
        ({"search": {"params": {"train.weight_decay": {"choice": [0.0, float("nan")]}}}}, "finite number"),
        ({"search": {"params": {"train.batch_size": {"int": [1, 2**70]}}}}, "must be an integer between"),
    ],
)
def test_search_space_numbers_must_be_finite_and_fit(tiny_config, section, message):
    from study.search_space import parse_search_space

    data = {**tiny_config({"name": "finetune", "epochs": 1}).to_dict(), **section}
    with pytest.raises(UserError, match=message):
        parse_search_space(data, "bad")


# ----------------------------------------------------------------------------- YAML files


@pytest.mark.parametrize("text", ["", "\n", "# nothing but a comment\n"])
def test_an_empty_config_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert_user_error(train(path, tmp_path / "run"), f"config {str(path)!r} is empty", tmp_path / "run")


def alias_bomb(levels: int, width: int) -> str:
    """Billion laughs: each level lists the previous one ``width`` times, under a valid key."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "x:\n" + "".join(f"  {line}\n" for line in lines) + f"wandb:\n  tags: *l{levels - 1}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        # 10**6 values: loaded and copied, it would pass as wandb.tags; 9**9, it would take minutes.
        (alias_bomb(6, 10), "expands to over 100000 values"),
        (alias_bomb(9, 9), "expands to over 100000 values"),
        ("wandb:\n  tags: &a [*a]\n", "recursive alias"),
    ],
    ids=["million", "billion", "recursive"],
)
def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, text, message):
    from study.config import load_config

    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_an_alias_bomb_in_an_override_is_kept_as_text(config_file):
    from study.config import load_config

    levels = ["&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 6)
    ]
    with pytest.raises(UserError, match=r"wandb.tags must be a list, got '\[&l0"):
        load_config(config_file, [f"wandb.tags=[{', '.join(levels)}]"])


def test_an_oversized_config_is_refused(tmp_path):
    from study.config import load_config

    path = tmp_path / "big.yaml"
    path.write_text("wandb:\n  tags:\n" + "  - a\n" * 300_000)
    with pytest.raises(UserError, match=r"big.yaml' is 1.7 MiB; a config or search space is at most 1 MiB"):
        load_config(path)


def test_yaml_aliases_within_bounds_still_work(tmp_path):
    from study.config import load_config

    path = tmp_path / "aliases.yaml"
    path.write_text("wandb:\n  tags: &tags [a, b]\nx: *tags\n")
    with pytest.raises(UserError, match="unknown config section 'x'"):  # read, then validated
        load_config(path)
    path.write_text("schedule: &s {name: finetune, epochs: 1}\n")
    assert load_config(path).schedule == {"name": "finetune", "epochs": 1}


# ----------------------------------------------------------------------------- manifests

HEADER = b"path,pid,camid,split\n"


@pytest.mark.parametrize(
    "rows, message",
    [
        (b"a.jpg,1,1,train\nb\xff.jpg,1,2,train\n", r"is not UTF-8 text: byte 0xff on line 3"),
        (
            b"a.jpg,1,1,train\nb.jpg,1,2,train\n./a.jpg,2,2,train\n",
            r"set.csv:4: './a.jpg' is listed with identity 2 here and identity 1 on line 2",
        ),
        (
            b"a.jpg,1,1,query\nc.jpg,1,2,gallery\na.jpg,2,1,gallery\n",
            r"set.csv:4: 'a.jpg' is listed with identity 2 here and identity 1 on line 2",
        ),
        (
            b"a.jpg,1,1,train\nb.jpg,2,1,query\nc.jpg,2,2,gallery\na.jpg,1,2,gallery\n",
            r"set.csv:5: 'a.jpg' is listed in train and gallery \(line 2\)",
        ),
        (
            b"b.jpg,2,1,query\na.jpg,1,1,train\nc.jpg,2,2,gallery\nb.jpg,2,1,train\n",
            r"set.csv:5: 'b.jpg' is listed in train and query \(line 2\)",
        ),
    ],
    ids=[
        "not-utf8",
        "two-identities-in-train",
        "two-identities-in-test",
        "train-in-gallery",
        "query-in-train",
    ],
)
def test_bad_manifest(tmp_path, rows, message):
    from study.data import read_dataset

    manifest = tmp_path / "set.csv"
    manifest.write_bytes(HEADER + rows)
    with pytest.raises(UserError, match=message):
        read_dataset(manifest)


def test_a_manifest_may_list_an_image_in_query_and_gallery_and_start_with_a_bom(tmp_path):
    from study.data import read_dataset

    manifest = tmp_path / "set.csv"
    manifest.write_bytes(b"\xef\xbb\xbf" + HEADER + b"a.jpg,1,1,train\nb.jpg,2,1,query\nb.jpg,2,1,gallery\n")
    data = read_dataset(manifest)
    assert [s.pid for s in data.query] == [2] and [s.pid for s in data.gallery] == [2]


@pytest.mark.slow
def test_a_bad_manifest_is_one_line_from_the_cli(config_file, tmp_path):
    manifest = tmp_path / "set.csv"
    manifest.write_bytes(HEADER + b"a.jpg,1,1,train\na.jpg,2,1,train\n")
    result = train(config_file, tmp_path / "run", f"data.root={manifest}")
    assert_user_error(
        result, "'a.jpg' is listed with identity 2 here and identity 1 on line 2", tmp_path / "run"
    )


# ----------------------------------------------------------------------------- Ray


@pytest.mark.slow
@pytest.mark.parametrize(
    "address, message",
    [
        ("not-an-address", "--address 'not-an-address' is not a Ray address; use auto, HOST:PORT"),
        ("10.0.0.5:port", "--address '10.0.0.5:port' is not a Ray address"),
        ("http://10.0.0.5:8265", "--address 'http://10.0.0.5:8265' is not a Ray address"),
    ],
)
def test_sweep_address_that_is_not_one(space_file, tmp_path, address, message):
    result = sweep(space_file, tmp_path / "study", "--address", address)
    assert_user_error(result, message, tmp_path / "study")


@pytest.mark.slow
def test_sweep_address_where_nothing_listens_is_refused_at_once(space_file, tmp_path):
    import socket

    with socket.socket() as bound:  # a port of ours that accepts no connection: refused at once
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        result = sweep(space_file, tmp_path / "study", "--address", f"127.0.0.1:{port}")
    assert_user_error(
        result, f"no Ray cluster answers at 127.0.0.1:{port} (Connection refused", tmp_path / "study"
    )


def test_an_address_that_never_answers_is_given_up_after_a_few_seconds(monkeypatch):
    import socket

    waited = []

    def silent(address, timeout):
        waited.append(timeout)
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    with pytest.raises(
        UserError, match=r"no Ray cluster answers at ray://head:10001 \(no answer within 5 s\)"
    ):
        sweep_preflight.check_address("ray://head:10001")
    with pytest.raises(UserError, match=r"RAY_ADDRESS"):
        sweep_preflight.check_address("head:6379", "RAY_ADDRESS")
    assert waited == [5.0, 5.0]


def test_address_auto_without_a_cluster_is_one_line(monkeypatch):
    import ray._private.services

    def nothing_runs(address):
        raise ConnectionError("Could not find any running Ray instance.")

    monkeypatch.setattr(ray._private.services, "canonicalize_bootstrap_address", nothing_runs)
    with pytest.raises(UserError, match="--address auto: no Ray cluster runs on this machine"):
        sweep_preflight.check_address("auto")
    sweep_preflight.check_address("local")  # starts a Ray of the study's own: nothing to check
    sweep_preflight.check_address(None)


@pytest.mark.slow
def test_resources_this_machine_lacks_are_refused_before_ray_starts(space_file, tmp_path):
    result = sweep(space_file, tmp_path / "study", "--set", f"tune.resources.cpu={(os.cpu_count() or 1) + 1}")
    assert_user_error(result, "per trial, but this Ray machine has", tmp_path / "study")
    assert result.stdout == ""  # nor did the sweep describe a study it will not run
    assert sorted(p.name for p in tmp_path.iterdir()) == ["space.yaml"]


def test_resources_a_cluster_lacks_leave_no_study_folder(space_file, tmp_path, monkeypatch, capsys):
    """On a cluster the check needs Ray joined, after the study folder's scratch space is made."""

    def joined(address, scratch):
        scratch.mkdir(parents=True)  # as init_ray does

    import ray

    monkeypatch.setattr(sweep_preflight, "check_ray", lambda address, tune: None)
    monkeypatch.setattr(sweep_tuner, "init_ray", joined)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}}])  # the cluster
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    out = tmp_path / "study"
    with pytest.raises(SystemExit) as exit_info:
        sweep_cli.main([str(space_file), "--out", str(out), "--set", "tune.resources.cpu=4"])
    assert exit_info.value.code == 2
    assert "tune.resources.cpu=4 per trial, but this Ray machine has 2 CPUs" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- result files

KILLED_INSIDE_A_WRITE = """
import os, sys
from study import files
def killed(*args):  # between writing the temporary file and renaming it: as a kill -9 would
    os.kill(os.getpid(), 9)
files.os.replace = killed
files.atomic_write_bytes(sys.argv[1], bytes(1_000_000))
"""


def write_and_get_killed(path: Path) -> Path:
    """Leave what a kill inside an atomic write of ``path`` leaves: its temporary file."""
    process = subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_WRITE, str(path)], cwd=ROOT)
    assert process.returncode == -9
    (left,) = path.parent.glob(f".{path.name}.*.tmp")
    return left


def test_a_run_and_its_resume_remove_what_a_kill_inside_a_write_left(tmp_path, tiny_config):
    from study.files import atomic_open
    from study.trainer import train_run

    config = tiny_config({"name": "finetune", "epochs": 1})
    out = tmp_path / "run"
    before_the_run = write_and_get_killed(out / "checkpoints" / "epoch-0001.pt")
    train_run(config, out)
    assert not before_the_run.exists()
    checkpoint = write_and_get_killed(out / "checkpoints" / "epoch-0001.pt")
    table = write_and_get_killed(out / "metrics.csv")
    with atomic_open(out / "checkpoints" / "epoch-0002.pt") as file:  # a writer still running: kept
        file.write(b"partial")
        running = next((out / "checkpoints").glob(".epoch-0002.pt.*.tmp"))
        train_run(config, out, resume=True)
        assert not checkpoint.exists() and not table.exists() and running.exists()


@pytest.fixture
def jpeg_files(tmp_path) -> list[str]:
    from PIL import Image

    paths = [tmp_path / f"{n}.jpg" for n in range(2)]
    for path in paths:
        Image.new("RGB", (4, 8), (200, 30, 90)).save(path)
    return [str(p) for p in paths]


def test_the_image_cache_removes_a_killed_save(tmp_path, jpeg_files):
    from study.data import decode_images

    cache = tmp_path / "cache"
    left = write_and_get_killed(cache / "images-x.pt")
    decode_images(jpeg_files, 8, 4, str(cache))
    assert not left.exists() and len(list(cache.glob("images-*.pt"))) == 1


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_follow_the_umask_as_open_does(tmp_path, umask, tiny_config):
    from study.files import atomic_torch_save, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "summary.json", "{}\n")
        atomic_torch_save({"x": 1}, tmp_path / "epoch-0001.pt")
        with open(tmp_path / "plain.txt", "w") as file:
            file.write("x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == dict.fromkeys(["summary.json", "epoch-0001.pt", "plain.txt"], 0o666 & ~umask)


# ----------------------------------------------------------------------------- config values (issue 28)

SCHEDULE = "schedule: {name: finetune, epochs: 1}\n"


@pytest.mark.parametrize(
    "text, message",
    [
        ("train: {momentum: 5}\n", "train.momentum must be in [0, 1) (0: none), got 5"),
        ("train: {momentum: 1.0}\n", "train.momentum must be in [0, 1)"),
        ("train: {momentum: -0.1}\n", "train.momentum must be in [0, 1)"),
        ("train: {device: cpu99}\n", "train.device 'cpu99' is not a device; use auto, cpu, cuda, cuda:N"),
        ("train: {device: 'cuda:x'}\n", "train.device 'cuda:x' is not a device"),
        ("model: {head_dim: 1099511627776}\n", "model.head_dim must be at most 65536, got 1099511627776"),
        ("data: {height: 1000000}\n", "data.height must be at most 2048, got 1000000"),
        ("data: {width: 99999}\n", "data.width must be at most 2048, got 99999"),
        # YAML 1.1 surprises: refused where users may mean two things
        ("train: {batch_size: 030}\n", "030 is ambiguous (YAML 1.1 reads it as 24)"),
        ("train: {seed: 08}\n", "08 is ambiguous (YAML 1.1 reads it as '08')"),
        ("train: {eval_every: 4:30}\n", "4:30 is ambiguous (YAML 1.1 reads it as 270)"),
        # a key given twice
        ("train: {seed: 1, seed: 2}\n", "column 18: duplicate key 'seed' (first on line 2)"),
        ("train:\n  seed: 1\ntrain:\n  seed: 2\n", "line 4, column 1: duplicate key 'train' (first on"),
    ],
    ids=lambda value: value if len(value) < 30 else None,
)
def test_config_values_that_are_refused(tmp_path, text, message):
    from study.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(SCHEDULE + text)
    with pytest.raises(UserError) as error:
        load_config(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("train: {weight_decay: 1.0e9}\n", "weight_decay", 1e9),  # YAML 1.1: the string "1.0e9"
        ("train: {weight_decay: 5e-4}\n", "weight_decay", 5e-4),
        ("train: {batch_size: 1.6e1}\n", "batch_size", None),  # a float where an integer is due: refused
        ("train: {batch_size: 0x10}\n", "batch_size", 16),
        ("train: {batch_size: 1_6}\n", "batch_size", 16),
        ("train: {momentum: 0.95}\n", "momentum", 0.95),
        ("train: {momentum: 0}\n", "momentum", 0),
    ],
)
def test_yaml_numbers_are_read_as_users_mean(tmp_path, text, key, value):
    from study.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text(SCHEDULE + text)
    if value is None:
        with pytest.raises(UserError, match="must be an integer"):
            load_config(path)
        return
    assert getattr(load_config(path).train, key) == value


def test_yaml_merge_keys_may_still_override_what_they_merge(tmp_path):
    from study.config import load_config

    path = tmp_path / "config.yaml"
    path.write_text("x: &base {name: finetune, epochs: 1}\nschedule: {<<: *base, epochs: 3}\n")
    with pytest.raises(UserError, match="unknown config section 'x'"):
        load_config(path)
    from study.config import load_yaml

    assert load_yaml(path.read_text())["schedule"] == {"name": "finetune", "epochs": 3}


def test_a_config_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path):
    from study.config import load_config

    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    for path in (fifo, Path("/dev/zero"), tmp_path):
        with pytest.raises(UserError, match=f"config {str(path)!r} is not a regular file"):
            load_config(path)


def test_a_cuda_index_this_machine_lacks_is_refused(monkeypatch):
    from study.devices import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"train.device=cuda:2 but this machine has 2 CUDA devices"):
        choose_device("cuda:2")
    assert choose_device("cuda:1") == torch.device("cuda", 1)


# ------------------------------------------------------------------------- data and result folders (issue 28)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp: tmp / ("é" * 128), "holds a name of 256 bytes, over the 255 a file name may have"),
        (lambda tmp: tmp / "/".join(["abc"] * 1100), "bytes long, over 4095; choose a shorter one"),
    ],
    ids=["name-of-256-bytes", "path-of-4400-bytes"],
)
def test_output_paths_the_file_system_cannot_hold_are_refused(tmp_path, make, message):
    from study.files import check_output_file, check_output_folder

    path = make(tmp_path)
    for check in (check_output_folder, lambda p, option: check_output_file(p / "x.png", option)):
        with pytest.raises(UserError) as error:
            check(path, "--out")
        assert message in str(error.value)
    assert os.listdir(tmp_path) == []


DATA_FOLDERS = {
    "cache-dir-a-file": ("cache_dir", a_file, "data.cache_dir '{path}' is a file, not a folder"),
    "cache-dir-unwritable": ("cache_dir", lambda tmp: Path("/sys/rs-cache"), "cannot write into '/sys'"),
    "synthetic-dir-a-file": ("synthetic_dir", a_file, "data.synthetic_dir '{path}' is a file, not a folder"),
    "synthetic-dir-under-a-file": (
        "synthetic_dir",
        lambda tmp: a_file(tmp) / "data",
        "data.synthetic_dir '{path}' cannot be created: '{tmp}/a_file' is a file",
    ),
    "synthetic-dir-unwritable": (
        "synthetic_dir",
        lambda tmp: Path("/sys/rs-data"),
        "cannot write into '/sys'",
    ),
}


@pytest.mark.parametrize("case", DATA_FOLDERS)
def test_data_folders_that_cannot_be_written_are_refused_before_any_image_is_decoded(
    tmp_path, tiny_config, monkeypatch, case
):
    import study.data.images as images
    from study.data import check_data_set, load_data

    key, make, message = DATA_FOLDERS[case]
    path = make(tmp_path)
    config = tiny_config({"name": "finetune", "epochs": 1})
    setattr(config.data, key, str(path))
    if key == "synthetic_dir":
        config.data.synthetic.seed = 7  # a data set not generated yet
    decoded = []
    monkeypatch.setattr(images, "_decode", lambda *args: decoded.append(args))
    for check in (check_data_set, lambda c: load_data(c.data)):
        with pytest.raises(UserError) as error:
            check(config)
        assert message.format(path=path, tmp=tmp_path) in str(error.value)
    assert decoded == []
    assert_nothing_created(tmp_path)


def test_a_read_only_cache_that_holds_the_images_is_read(tmp_path, tiny_config, monkeypatch):
    import study.data.images as images
    from study.data import load_data

    config = tiny_config({"name": "finetune", "epochs": 1}, data={"cache_dir": str(tmp_path / "cache")})
    first = load_data(config.data)

    def read_only(path, option):  # as check_output_folder answers for a read-only folder, even as root
        raise UserError(f"{option} {str(path)!r} cannot be created: cannot write into it")

    monkeypatch.setattr(images, "check_output_folder", read_only)
    assert torch.equal(load_data(config.data).train.images, first.train.images)


# ----------------------------------------------------------------------------- checkpoints (issue 28)


def model_state() -> dict:
    return {"head.weight": torch.zeros(2, 2)}


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"model": {"head.weight": "zeros"}}, "its 'model' entry 'head.weight' is str, not a state_dict"),
        ({"model": {"head.weight": [0.0, 1.0]}}, "its 'model' entry 'head.weight' is list"),
        ({"ema": None}, "its 'ema' is NoneType, not a state_dict of tensors"),
        ({"ema": {"head.weight": 3}}, "its 'ema' entry 'head.weight' is int"),
    ],
    ids=["model-holds-a-string", "model-holds-a-list", "ema-null", "ema-holds-an-int"],
)
def test_a_checkpoint_whose_weights_are_not_tensors_is_refused(tmp_path, entries, message):
    from study.run_folder import read_checkpoint

    path = tmp_path / "epoch-0001.pt"
    torch.save({"config": {}, "model": model_state(), **entries}, path)
    with pytest.raises(UserError) as error:
        read_checkpoint(path)
    assert message in str(error.value) and "pass a checkpoint training wrote" in str(error.value)
    torch.save({"config": {}, "model": model_state(), "ema": model_state()}, path)
    assert read_checkpoint(path)["ema"].keys() == {"head.weight"}


def test_a_weights_file_holding_python_objects_is_refused_saying_why_not_how_to_unpickle_it(tmp_path):
    import datetime

    import torch

    from study.models import ModelConfig, ensure_weights

    path = tmp_path / "weights.pt"
    torch.save({"features.0.0.weight": torch.zeros(1), "saved": datetime.datetime(2026, 1, 1)}, path)
    with pytest.raises(UserError) as refused:
        ensure_weights(ModelConfig(backbone="mobilenet_v2", weights=str(path)))
    message = str(refused.value)
    assert (
        "holds Python objects besides tensors" in message and "torch.save(net.state_dict(), path)" in message
    )
    assert "weights_only" not in message and "\n" not in message


def test_a_ray_tmpdir_too_long_for_rays_sockets_is_refused_before_ray_starts(monkeypatch):
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "x" * 60)
    with pytest.raises(UserError, match=r"RAY_TMPDIR is 65 bytes long; .* at most 39 bytes"):
        sweep_preflight.check_ray_tmpdir()
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/ray-short")
    sweep_preflight.check_ray_tmpdir()
