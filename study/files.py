"""Writing result files so that a crash never leaves one half written, and checking where they go.

An atomic write goes to a temporary file beside its target, named after the target, this machine and
the writing process (``.metrics.csv.HOST.PID.RANDOM.tmp``), then is renamed over the target. A kill
between the two leaves the temporary file; ``remove_stale_temporaries`` deletes those whose writer
has ended, and runs call it on start.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from study.errors import UserError

# A temporary file of a writer on another machine (a shared file system) is stale after a day.
STALE_AFTER_S = 24 * 3600
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")
_LEGACY_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's, before the host and pid


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


@contextlib.contextmanager
def atomic_open(path: str | Path) -> Iterator[BinaryIO]:
    """Write ``path`` through a temporary file beside it: flushed to disk, then renamed over ``path``.

    The file gets the permissions a plain ``open(path, "wb")`` would give (0666 less the umask).

    For example ``with atomic_open("runs/x/model.pt") as file: torch.save(state, file)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    with atomic_open(path) as file:
        file.write(data)


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
    import torch

    with atomic_open(path) as file:
        torch.save(obj, file)


def atomic_link_or_copy(source: str | Path, target: str | Path) -> bool:
    """Place ``source`` at ``target`` (a hard link, else a copy) unless ``target`` exists; never replaces it.

    Returns whether this call placed it. Two writers racing for one target leave exactly one's file.
    """
    target = Path(target)
    staged = target.with_name(f".{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.link(source, staged)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, staged)
    try:
        os.link(staged, target)  # fails when target exists, where a rename would replace it
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of atomic writes in ``folder`` that no running writer will finish.

    A temporary file is stale when its writer was a process of this machine that has ended, or when
    it is over a day old. Returns the files deleted.

    After a kill -9 inside a checkpoint write, ``remove_stale_temporaries("runs/one/checkpoints")``
    removes and returns ``[PosixPath('runs/one/checkpoints/.epoch-0003.pt.node1.4242.9f86d081.tmp')]``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now = time.time()
    for path in folder.glob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match is None and not _LEGACY_TEMPORARY.match(path.name):
            continue
        try:
            old = now - path.stat().st_mtime > STALE_AFTER_S
        except OSError:
            continue
        ended = match is not None and match["host"] == _host() and not _running(int(match["pid"]))
        if ended or old:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# ----------------------------------------------------------------------------- checking outputs


def check_output_folder(path: str | Path, option: str = "--out") -> None:
    """Refuse a result folder that is a file or cannot be created or written, before any work starts.

    Really tries: creates and removes a probe file in the folder, or in its nearest existing parent
    (permission bits say nothing for root, nor for read-only file systems).

    For example ``check_output_folder("/proc/run")`` raises
    ``UserError("--out '/proc/run' cannot be created: ...")``.
    """
    path = Path(path)
    _check_names(path, option)
    if path.is_file():
        raise UserError(f"{option} {str(path)!r} is a file, not a folder; choose another {option}")
    _probe(path, path, option)


def check_output_file(path: str | Path, option: str, suffixes: Iterable[str] = ()) -> None:
    """Refuse an output file that is a folder, cannot be written, or lacks one of ``suffixes``.

    For example ``check_output_file("ranks", "--show-out", (".png", ".jpg"))`` raises a UserError:
    it needs .png or .jpg.
    """
    path = Path(path)
    _check_names(path, option)
    suffixes = tuple(suffixes)
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(
            f"{option} {str(path)!r} needs a file name ending in {', '.join(suffixes[:-1])} or {suffixes[-1]}"
        )
    _probe(path.parent, path, option)


# The longest file name (in bytes) and path that Linux file systems take.
NAME_MAX, PATH_MAX = 255, 4095


def _check_names(path: Path, option: str) -> None:
    """Before any stat, which fails with "File name too long" itself."""
    if len(os.fsencode(path)) > PATH_MAX:
        raise UserError(
            f"{option} is {len(os.fsencode(path))} bytes long, over {PATH_MAX}; choose a shorter one"
        )
    for name in path.parts:
        size = len(os.fsencode(name))
        if size > NAME_MAX:
            raise UserError(
                f"{option} {str(path)!r} holds a name of {size} bytes, over the {NAME_MAX} a file name"
                f" may have; choose a shorter {option}"
            )


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
