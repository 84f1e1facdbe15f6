from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from study.data import read_dataset
from study.data.synthesize import main, synthesize
from study.errors import UserError


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("synth") / "ids8-cams3-seed0", identities=8, cameras=3, seed=0)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(small, tmp_path):
    again = synthesize(tmp_path / "again", identities=8, cameras=3, seed=0)
    other = synthesize(tmp_path / "other", identities=8, cameras=3, seed=1)
    assert digest(again) == digest(small)
    differing = {name for name, h in digest(other).items() if digest(small).get(name) != h}
    assert len(differing) > 0.9 * len(digest(other))


def test_market_layout_with_half_the_identities_for_training(small):
    data = read_dataset(small)
    assert data.name == "market"
    assert {s.pid for s in data.train} == {1, 2, 3, 4}
    assert {s.pid for s in data.query} == {s.pid for s in data.gallery} == {5, 6, 7, 8}
    assert Counter((s.pid, s.camid) for s in data.query) == {
        (pid, cam): 1 for pid in range(5, 9) for cam in (1, 2, 3)
    }
    per_camera = Counter((s.pid, s.camid) for s in data.train + data.query + data.gallery)
    assert set(per_camera.values()) <= set(range(3, 7))
    names = [Path(s.path).name for s in data.train + data.query + data.gallery]
    assert all(re.fullmatch(r"\d{4}_c[1-3]_\d{4}\.jpg", name) for name in names)
    with Image.open(data.train[0].path) as image:
        assert image.size == (64, 128) and image.mode == "RGB"
    assert "identities: 8" in (small / "README.txt").read_text()
    assert not [p for p in small.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_refuses_to_overwrite_and_bad_arguments(small, tmp_path):
    with pytest.raises(UserError, match="already exists"):
        synthesize(small, identities=8, cameras=3, seed=0)
    with pytest.raises(UserError, match="cameras must be between 2 and 9, got 1"):
        synthesize(tmp_path / "x", identities=8, cameras=1, seed=0)
    with pytest.raises(UserError, match="identities must be between 2 and 9999"):
        synthesize(tmp_path / "x", identities=1, cameras=2, seed=0)
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path, capsys, small):
    main([str(tmp_path / "cli"), "--identities", "4", "--cameras", "2", "--seed", "5"])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'cli'}"
    assert len(read_dataset(tmp_path / "cli").query) == 4
    with pytest.raises(SystemExit) as exit:
        main([str(small)])
    assert exit.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_module_entry_point_runs_without_warnings(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "study.data.synthesize",
            str(tmp_path / "m"),
            "--identities",
            "2",
            "--cameras",
            "2",
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
    )
    assert (run.returncode, run.stderr) == (0, "")
    assert (tmp_path / "m" / "query").is_dir()
