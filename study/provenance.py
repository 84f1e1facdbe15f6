"""Where a run's numbers came from: the things besides its config that change its bits.

The same config and seed repeat bit for bit only on the same kind of processor, with the same torch
build and CPU thread count: a CPU's vector kernels (AVX2, AVX-512, AMX) and the thread count change
the order of floating-point sums. Every epoch record carries these fields, so a study can tell
which of its runs are exactly comparable.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

ENVIRONMENT_KEYS = ("threads", "cpu_model", "gpu_model", "torch_version", "commit")
# What must agree for two runs of one seed to be bit-comparable (the commit may differ in code that
# does not touch the numbers; it is recorded, not required).
PAIRING_KEYS = ("threads", "cpu_model", "gpu_model", "torch_version")


def run_environment(device: torch.device) -> dict[str, str | int]:
    """The environment of the current process for a run on ``device``: ENVIRONMENT_KEYS.

    ``run_environment(torch.device("cpu"))["threads"]`` is ``torch.get_num_threads()``; ``gpu_model`` is
    empty on the CPU.
    """
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {
        "threads": torch.get_num_threads(),
        "cpu_model": cpu_model(),
        "gpu_model": gpu,
        "torch_version": str(torch.__version__),  # a TorchVersion would not load with weights_only
        "commit": code_commit(),
    }


@functools.cache
def cpu_model() -> str:
    """The processor's name and the vector kernels torch uses on it, e.g. ``AMD EPYC (AVX512)``."""
    name = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in (platform.processor(), platform.machine()):
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:  # not Linux: the platform's name is all there is
        pass
    kernels = [torch.backends.cpu.get_cpu_capability()]
    if "amx_tile" in flags:  # oneDNN's matrix units: used by bf16 and, on some builds, fp32 convolutions
        kernels.append("AMX")
    return f"{name} ({', '.join(kernels)})"


@functools.cache
def code_commit() -> str:
    """The git commit of this code, ``+dirty`` when tracked files differ from it; else the version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        if not (repo / ".git").exists():  # an installed copy: a repository around it is not its source
            raise OSError
        head = _git(repo, "rev-parse", "HEAD")
        dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"rollback-study {version('rollback-study')}"
        except PackageNotFoundError:
            return "unknown"
    return head[:12] + ("+dirty" if dirty else "")


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-C", str(repo), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def environment_of(history: list[dict]) -> dict[str, str | int | None]:
    """Each environment key over a run's epochs: its value, the values joined by `` + `` where a
    resumed run changed it, None where no epoch recorded it.

    >>> environment_of([{"threads": 1}, {"threads": 2}])["threads"], environment_of([])["cpu_model"]
    ('1 + 2', None)
    """
    found: dict[str, str | int | None] = {}
    for key in ENVIRONMENT_KEYS:
        values = list(dict.fromkeys(row[key] for row in history if row.get(key) not in (None, "")))
        found[key] = None if not values else values[0] if len(values) == 1 else " + ".join(map(str, values))
    return found
