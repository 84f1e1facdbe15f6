"""Writing result files so that a crash never leaves one half written, and checking where they go."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from study.errors import UserError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_csv(
    path: str | Path, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None
) -> None:
    """Write dict rows as CSV; columns default to the union of keys in first-seen order."""
    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    atomic_write_text(path, buffer.getvalue())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------- checking outputs


def check_output_folder(path: str | Path, option: str = "--out") -> None:
    """Refuse a result folder that is a file or cannot be created or written, before any work starts.

    Really tries: creates and removes a probe file in the folder, or in its nearest existing parent
    (permission bits say nothing for root, nor for read-only file systems).

    >>> check_output_folder("/proc/run")  # UserError: --out '/proc/run' cannot be created: ...
    """
    path = Path(path)
    if path.is_file():
        raise UserError(f"{option} {str(path)!r} is a file, not a folder; choose another {option}")
    _probe(path, path, option)


def check_output_file(path: str | Path, option: str, suffixes: Iterable[str] = ()) -> None:
    """Refuse an output file that is a folder, cannot be written, or lacks one of ``suffixes``.

    >>> check_output_file("ranks", "--show-out", (".png", ".jpg"))  # UserError: needs .png or .jpg
    """
    path = Path(path)
    suffixes = tuple(suffixes)
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(
            f"{option} {str(path)!r} needs a file name ending in {', '.join(suffixes[:-1])} or {suffixes[-1]}"
        )
    _probe(path.parent, path, option)


def _probe(folder: Path, target: Path, option: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = f"{option} {str(target)!r} cannot be created"
    if not existing.is_dir():
        raise UserError(f"{problem}: {str(existing)!r} is a file; choose another {option}")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(
            f"{problem}: cannot write into {str(existing)!r} ({reason}); choose another {option}"
        ) from None
