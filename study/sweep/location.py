"""Where the study folder of this sweep is, now: what Ray pickles with a folder takes it from here.

``--resume`` restores the searcher and the callbacks from Ray's pickle (``tune/tuner.pkl``), with
the absolute folder they were made in. A study moved or copied since (another disk, another
machine) would then write its tables and optuna.db into the old folder; on unpickling, these
objects (``InStudyFolder``) ask ``relocated`` for the folder the sweep runs in now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_current: Path | None = None


def set_study_folder(folder: Path | None) -> None:
    """The folder this process's sweep runs in (None: none; unpickled objects keep their own)."""
    global _current
    _current = None if folder is None else Path(folder)


def relocated(saved: str | Path) -> Path:
    """The study folder an unpickled object is to use: this sweep's, else the one it was made in."""
    return _current if _current is not None else Path(saved)


class InStudyFolder:
    """Base of what Ray pickles with the study folder in ``self.out``: unpickled, it takes the
    folder the sweep runs in now (``relocated``)."""

    out: Path

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.out = relocated(state["out"])  # a resumed study may have moved
