from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from study.data.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def test_summary_table(market_tree, simple_names, capsys):
    root = market_tree(simple_names)
    main([str(root)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"data set {root} (format market, detected)"
    assert lines[1].split() == ["split", "identities", "images", "cameras"]
    assert [line.split() for line in lines[2:]] == [
        ["train", "3", "5", "2"],
        ["query", "2", "2", "2"],
        ["gallery", "2", "3", "2"],
    ]


def test_junk_is_reported_not_counted(market_tree, capsys):
    root = market_tree(
        {
            "train": ["0002_c1s1_000451_03.jpg"],
            "query": ["0003_c2s1_000001_00.jpg"],
            "gallery": ["-1_c3s1_000551_02.jpg", "0003_c5s3_065037_02.jpg"],
        }
    )
    main([str(root), "--format", "market1501"])
    out = capsys.readouterr().out
    assert "format market1501, given" in out
    assert "gallery 1 2 2" in " ".join(out.split())
    assert "gallery holds 1 junk images (identity -1)" in out


def errors(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    return err


def test_errors_are_one_line_with_exit_status_2(market_tree, simple_names, tmp_path, capsys):
    assert "is not in the Market-1501 layout" in errors([str(tmp_path)], capsys)
    root = market_tree(simple_names)
    assert "did you mean 'msmt17'" in errors([str(root), "--format", "msmt71"], capsys)
    bad = root / "bounding_box_test" / "0005_c1_03.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 broken")
    assert f"cannot read image '{bad}'" in errors([str(root)], capsys)
    bad.unlink()
    (root / "bounding_box_test" / "0005_c1_01.jpg").unlink()
    (root / "bounding_box_test" / "0005_c1_02.jpg").unlink()
    assert "query identity 5" in errors([str(root)], capsys)


@pytest.mark.slow
def test_module_entry_point(market_tree, simple_names, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "study.data", str(tmp_path / "missing")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr == f"error: data set root '{tmp_path / 'missing'}' does not exist\n"
    ok = subprocess.run(
        [sys.executable, "-m", "study.data", str(market_tree(simple_names))],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and "train" in ok.stdout
