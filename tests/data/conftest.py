"""Small data sets built by the tests: tiny JPEGs in the layouts the readers understand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}


def write_image(
    path: Path, color: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (4, 8)
) -> Path:
    """A tiny solid JPEG (size is width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=95)
    return path


@pytest.fixture
def market_tree(tmp_path: Path) -> Callable[..., Path]:
    """Build a Market-layout folder: market_tree({"train": [names], "query": [...], "gallery": [...]})."""

    def build(names: dict[str, list[str]], root: Path | None = None) -> Path:
        root = root or tmp_path / "market"
        for split, folder in MARKET_FOLDERS.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            for name in names.get(split, []):
                write_image(root / folder / name)
        return root

    return build


@pytest.fixture
def simple_names() -> dict[str, list[str]]:
    """Three training identities, two test identities seen by two cameras each."""
    return {
        "train": ["0001_c1_00.jpg", "0001_c2_01.jpg", "0002_c1_00.jpg", "0002_c2_00.jpg", "0003_c1_00.jpg"],
        "query": ["0004_c1_00.jpg", "0005_c2_00.jpg"],
        "gallery": ["0004_c2_01.jpg", "0005_c1_01.jpg", "0005_c1_02.jpg"],
    }


@pytest.fixture
def jpeg() -> Callable[..., Path]:
    """write_image as a fixture: jpeg(path, color=(r, g, b), size=(w, h))."""
    return write_image
