"""Readers for person re-identification data sets: each one lists (path, pid, camid) per split.

Identity -1 marks junk images (Market-1501): they are dropped from training but kept in
query/gallery so that evaluation can ignore them. Identity 0 (Market-1501 distractors) is kept.
Camera ids are kept as written in the file names.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from study.errors import UserError, unknown

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SPLITS = ("train", "query", "gallery")
MARKET_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MSMT17_LISTS = {
    "train": ("list_train.txt", "list_val.txt"),
    "query": ("list_query.txt",),
    "gallery": ("list_gallery.txt",),
}


@dataclass(frozen=True)
class Sample:
    """One image: its path, identity and camera."""

    path: str
    pid: int
    camid: int


@dataclass
class ReIDDataset:
    """The file lists of a data set as read from disk; ``name`` is the format that read it."""

    name: str
    root: str
    train: list[Sample]
    query: list[Sample]
    gallery: list[Sample]

    def split(self, name: str) -> list[Sample]:
        """The samples of split ``name`` (train, query or gallery)."""
        return getattr(self, name)


# Market-style file names: the regex captures (pid, camid) at the start of the name.
MARKET_PATTERNS = {
    "market1501": re.compile(r"^(-?\d+)_c(\d)s\d_\d{6}_\d{2}\.jpg$"),  # 0002_c1s1_000451_03.jpg
    "dukemtmc": re.compile(r"^(\d{4})_c(\d)_f\d{7}\.jpg$"),  # 0005_c2_f0046985.jpg
    "cuhk03": re.compile(r"^(\d{4})_c(\d)_\d+\.(?:jpg|png)$"),  # 0001_c1_1.png
    "market": re.compile(r"^(-?\d+)_c(\d+)"),  # any name starting PPPP_cC
}
MARKET_EXAMPLES = {
    "market1501": "0002_c1s1_000451_03.jpg",
    "dukemtmc": "0005_c2_f0046985.jpg",
    "cuhk03": "0001_c1_1.png",
    "market": "0001_c1_anything.jpg",
}


def read_dataset(root: str | Path, format: str = "auto") -> ReIDDataset:
    """Read the train/query/gallery file lists of a data set.

    ``format`` is one of FORMATS or "auto" (a .csv file is a manifest, a folder with
    list_train.txt is MSMT17, anything else must be in the Market-1501 folder layout).

    >>> import tempfile
    >>> from study.data.synthesize import synthesize
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     data = read_dataset(synthesize(Path(folder) / "tiny", identities=4, cameras=2))
    >>> data.name, len(data.train), len(data.query), len(data.gallery)
    ('market', 13, 4, 14)
    """
    root = Path(root)
    if not root.exists():
        raise UserError(f"data set root {str(root)!r} does not exist")
    if format == "auto":
        format = detect_format(root)
    if format not in READERS:
        raise unknown("data set format", format, [*FORMATS, "auto"])
    splits = READERS[format](root)
    for samples in splits.values():
        _check_numbers(samples)
    splits["train"] = [s for s in splits["train"] if s.pid != -1]
    for split in SPLITS:
        if not splits[split]:
            raise UserError(f"the {split} split of {str(root)!r} (format {format}) has no images")
    return ReIDDataset(format, str(root), splits["train"], splits["query"], splits["gallery"])


def detect_format(root: Path) -> str:
    """The format "auto" resolves to for ``root``."""
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "manifest"
        raise UserError(f"data set root {str(root)!r} is a file; only a .csv manifest can be a file")
    if (root / MSMT17_LISTS["train"][0]).is_file():
        return "msmt17"
    if not (root / MARKET_FOLDERS["train"]).is_dir() and (root / "labeled").is_dir():
        return "cuhk03"
    first = next(_image_files(root / MARKET_FOLDERS["train"]), None)
    for name in ("market1501", "dukemtmc"):
        if first is not None and MARKET_PATTERNS[name].match(first.name):
            return name
    return "market"


def check_query_gallery(query: list[Sample], gallery: list[Sample]) -> None:
    """Raise a UserError naming the first query identity that has no gallery image."""
    gallery_pids = {s.pid for s in gallery}
    missing = sorted({s.pid for s in query} - gallery_pids)
    if missing:
        example = next(s.path for s in query if s.pid == missing[0])
        raise UserError(
            f"query identity {missing[0]} (e.g. {example}) has no gallery image"
            f" ({len(missing)} query identities have none)"
        )


def check_gallery_identities(gallery: list[Sample]) -> None:
    """Refuse a gallery of fewer than two identities (junk not counted): every ranking would be right."""
    identities = {s.pid for s in gallery} - {-1}
    if len(identities) < 2:
        raise UserError(
            f"the gallery holds {len(identities)} identity (e.g. {gallery[0].path}): every ranking would be"
            " right; a test needs 2+ gallery identities"
        )


def check_files(splits: dict[str, list[Sample]]) -> None:
    """Refuse an image that does not exist, or a training image that is also a test image via a link.

    Files are compared by device and inode, so a symlink or a hard link to a training image under
    another name counts as that image. Query and gallery may share an image (as manifests may).
    """
    train_files: dict[tuple[int, int], str] = {}
    for split, samples in splits.items():
        for sample in samples:
            try:
                status = os.stat(sample.path)
            except OSError as error:
                raise UserError(f"{split} image {sample.path!r} cannot be read: {error.strerror}") from None
            file = (status.st_dev, status.st_ino)
            if split == "train":
                train_files.setdefault(file, sample.path)
            elif file in train_files:
                raise UserError(
                    f"{split} image {sample.path!r} is the training image {train_files[file]!r} (linked);"
                    " an image the model trains on cannot evaluate it"
                )


# Identities and cameras become int64 tensors.
INT64 = range(-(2**63), 2**63)


def _check_numbers(samples: list[Sample]) -> None:
    for sample in samples:
        if sample.pid not in INT64 or sample.camid not in INT64:
            raise UserError(
                f"image {sample.path!r} has identity {sample.pid} and camera {sample.camid}; both must fit"
                " in 64 bits (-2**63 to 2**63 - 1)"
            )


def _image_files(folder: Path) -> Iterator[Path]:
    if folder.is_dir():
        # Hidden files are skipped: macOS leaves ._NAME copies beside the images.
        yield from sorted(
            p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        )


def _market_layout(pattern: str) -> Callable[[Path], dict[str, list[Sample]]]:
    def read(root: Path) -> dict[str, list[Sample]]:
        _check_market_folders(root)
        return {split: _parse_folder(root / folder, pattern) for split, folder in MARKET_FOLDERS.items()}

    return read


def _check_market_folders(root: Path) -> None:
    if not root.is_dir():
        raise UserError(f"data set root {str(root)!r} is not a folder (only a .csv manifest can be a file)")
    missing = [folder for folder in MARKET_FOLDERS.values() if not (root / folder).is_dir()]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())
        shown = ", ".join(found[:10]) + (", ..." if len(found) > 10 else "") if found else "nothing"
        expected = ", ".join(f"{f}/" for f in MARKET_FOLDERS.values())
        raise UserError(
            f"{str(root)!r} is not in the Market-1501 layout: expected folders {expected}"
            f" but {', '.join(missing)} missing; found {shown}"
        )


def _parse_folder(folder: Path, pattern: str) -> list[Sample]:
    regex = MARKET_PATTERNS[pattern]
    samples = []
    for path in _image_files(folder):
        match = regex.match(path.name)
        if match is None:
            raise UserError(
                f"cannot parse identity and camera from file name {str(path)!r}"
                f" (format {pattern} expects names like {MARKET_EXAMPLES[pattern]})"
            )
        samples.append(Sample(str(path), int(match[1]), int(match[2])))
    return samples


def _read_cuhk03(root: Path) -> dict[str, list[Sample]]:
    # The CUHK03-np root holds labeled/ and detected/; "cuhk03" reads labeled/ from it.
    # Point root at the detected/ folder to read the detected boxes.
    if not (root / MARKET_FOLDERS["train"]).is_dir() and (root / "labeled").is_dir():
        root = root / "labeled"
    return _market_layout("cuhk03")(root)


def _read_msmt17(root: Path) -> dict[str, list[Sample]]:
    missing = [name for names in MSMT17_LISTS.values() for name in names if not (root / name).is_file()]
    if missing:
        raise UserError(f"{str(root)!r} is not an MSMT17 folder: list files {', '.join(missing)} missing")
    images = {
        "train": _first_folder(root, ("train", "mask_train_v2")),
        "query": _first_folder(root, ("test", "mask_test_v2")),
    }
    images["gallery"] = images["query"]
    return {
        split: [s for name in names for s in _parse_msmt17_list(root / name, images[split])]
        for split, names in MSMT17_LISTS.items()
    }


def _first_folder(root: Path, names: Iterable[str]) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"MSMT17 root {str(root)!r} has none of the image folders {', '.join(names)}")


def _parse_msmt17_list(list_file: Path, folder: Path) -> list[Sample]:
    samples = []
    for number, line in enumerate(_utf8_text(list_file, "MSMT17 list").splitlines(), 1):
        if not line.strip():
            continue
        try:
            relative, pid = line.split()
            camid = int(Path(relative).name.split("_")[2])
            samples.append(Sample(str(folder / relative), int(pid), camid))
        except (ValueError, IndexError):
            raise UserError(
                f"{list_file}:{number}: cannot parse {line.strip()!r}"
                " (expected 'pid/PPPP_NNN_CC_....jpg pid' as in MSMT17_V1)"
            ) from None
    return samples


def _read_manifest(path: Path) -> dict[str, list[Sample]]:
    if not path.is_file():
        raise UserError(f"manifest {str(path)!r} must be a CSV file with columns path,pid,camid,split")
    splits: dict[str, list[Sample]] = {split: [] for split in SPLITS}
    seen: dict[str, tuple[int, str, int]] = {}  # normalised path -> (pid, split, line) of its first row
    reader = csv.DictReader(io.StringIO(_utf8_text(path, "manifest"), newline=""))
    columns = {"path", "pid", "camid", "split"}
    if reader.fieldnames is None or not columns <= set(reader.fieldnames):
        raise UserError(f"manifest {str(path)!r} needs a header with columns path,pid,camid,split")
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if None in row.values() or not row["path"]:
            raise UserError(f"{where}: every row needs path,pid,camid,split, got {row}")
        if row["split"] not in splits:
            raise UserError(f"{where}: {unknown('split', row['split'], SPLITS)}")
        try:
            pid, camid = int(row["pid"]), int(row["camid"])
        except (TypeError, ValueError):
            raise UserError(
                f"{where}: pid and camid must be integers, got {row['pid']!r}, {row['camid']!r}"
            ) from None
        image = os.path.normpath(path.parent / row["path"])
        if image in seen:
            first_pid, first_split, first_line = seen[image]
            if first_pid != pid:
                raise UserError(
                    f"{where}: {row['path']!r} is listed with identity {pid} here and identity"
                    f" {first_pid} on line {first_line}; an image shows one identity"
                )
            if "train" in (first_split, row["split"]) and first_split != row["split"]:
                other = row["split"] if first_split == "train" else first_split
                raise UserError(
                    f"{where}: {row['path']!r} is listed in train and {other} (line {first_line});"
                    " an image the model trains on cannot evaluate it"
                )
        else:
            seen[image] = (pid, row["split"], reader.line_num)
        splits[row["split"]].append(Sample(str(path.parent / row["path"]), pid, camid))
    return splits


def _utf8_text(path: Path, what: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{what} {str(path)!r} is not UTF-8 text: byte {data[error.start]:#04x} on line {line};"
            " save it as UTF-8"
        ) from None


READERS: dict[str, Callable[[Path], dict[str, list[Sample]]]] = {
    "market1501": _market_layout("market1501"),
    "dukemtmc": _market_layout("dukemtmc"),
    "cuhk03": _read_cuhk03,
    "msmt17": _read_msmt17,
    "market": _market_layout("market"),
    "manifest": _read_manifest,
}
FORMATS = tuple(READERS)
