"""Before a study starts: what it needs is installed, its folder, data set and Ray address are usable, its
resources exist; and the lock that keeps a second sweep out of its folder. Needs no Ray at import."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from study.config import RunConfig, read_yaml
from study.errors import UserError
from study.files import check_output_folder
from study.search_space import (
    SearchSpace,
    TuneSettings,
)

EXPERIMENT = "tune"  # Ray's experiment folder inside the study folder
LOCK = ".lock"  # held by the sweep running in a study folder
USER_ERROR = "user_error.txt"  # a trial's UserError, which ends the sweep with that line
# How long a Ray address may take to accept a connection before it counts as unreachable.
ADDRESS_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001


def preflight(
    space: SearchSpace, base: RunConfig, out: Path, address: str | None, resume: bool, wandb_mode: str
) -> bool:
    """Every check a study needs before Ray starts, all of them: one UserError listing every problem
    (what is installed, the study folder, Ray and its resources, the data set, the backbone's
    weights). Returns whether Ray can restore the study in ``out``."""
    problems: list[str] = []

    def attempt(check: Any, *args: Any) -> tuple[Any, bool]:
        try:
            return check(*args), True
        except UserError as error:
            problems.append(str(error))
            return None, False

    _, installed = attempt(check_installed, wandb_mode)
    _, usable = attempt(check_output_folder, out)
    restore = attempt(check_study_dir, out, space, resume)[0] if usable else False
    if installed:  # Ray is there to ask
        attempt(check_ray, address, space.tune)
    attempt(check_data, space, base)
    attempt(check_weights, base)
    if len(problems) > 1:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise UserError(f"{len(problems)} problems; the study starts once they are fixed:\n{listed}")
    if problems:
        raise UserError(problems[0])
    return bool(restore)


def check_weights(config: RunConfig) -> None:
    """The backbone's weights are there before any trial needs them: torchvision's ImageNet weights
    fetched once into torch's cache now (every trial would fail offline), a file readable, the
    packaged ones installed."""
    from study.models import ensure_weights

    ensure_weights(config.model)


def check_installed(wandb_mode: str) -> None:
    """A study needs the sweep extra, unlike the trainer: Ray Tune, Optuna and (unless disabled) W&B.

    ``check_installed("disabled")`` raises a UserError naming what is missing, e.g. "needs ray and optuna".
    """
    needed = ["ray", "optuna"] + (["wandb"] if wandb_mode != "disabled" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing == ["wandb"]:
        raise UserError("W&B logging needs wandb: pip install wandb, or set wandb.mode=disabled")
    if missing:
        names = f"{', '.join(missing[:-1])} and {missing[-1]}" if len(missing) > 1 else missing[0]
        raise UserError(f"python -m study.sweep needs {names}: pip install -e '.[sweep]'")


def check_study_dir(out: Path, space: SearchSpace, resume: bool) -> bool:
    """Refuse a folder holding another study (or this one without --resume); True when Ray can restore it."""
    marker = out / "study.yaml"
    if marker.exists():
        saved = read_yaml(marker)
        if not resume:
            raise UserError(
                f"{out} already holds the study {saved.get('_name', '?')!r}; "
                "pass --resume to continue it or choose another --out"
            )
        if {k: v for k, v in saved.items() if k != "_name"} != space.source:
            sections = sorted({*saved, *space.source} - {"_name"})
            differ = [s for s in sections if saved.get(s) != space.source.get(s)]
            raise UserError(
                f"{out} holds a different study (section {', '.join(differ)} differs); resume with the same "
                "search space and --set options, or choose another --out"
            )
        return (out / EXPERIMENT / "tuner.pkl").exists()
    if resume:
        raise UserError(f"{out} holds no study to resume; run without --resume to start one")
    if out.exists() and any(p.name != LOCK for p in out.iterdir()):
        raise UserError(f"{out} is not empty and holds no study; choose another --out")
    return False


def check_data(space: SearchSpace, config: RunConfig) -> None:
    """The data set of every planned configuration, before any trial: its layout and split, batches
    that can be drawn, memory, every image decoding (``study.data.check_data_sets``); the synthetic
    set is generated here, once."""
    from study.data import check_data_sets

    if config.data.root != "synthetic" and not Path(config.data.root).exists():
        raise UserError(
            f"data.root {config.data.root!r} does not exist; download the data set there, "
            "or point data.root at it (--set data.root=PATH)"
        )
    check_data_sets(planned_configs(space))


def planned_configs(space: SearchSpace) -> list[RunConfig]:
    """Every configuration of a grid; under TPE each schedule at each bound or choice of each of its
    parameters (what a trial can be given), the others at their first."""
    from study.search_space import SCHEDULE_KEY

    if space.tune.sampler == "grid":
        points = space.grid()
    else:
        points = []
        for schedule in space.schedules:
            params = space.params_for(schedule)
            first = {p.key: p.args[0] for p in params}
            points += [{SCHEDULE_KEY: schedule, **first, p.key: v} for p in params for v in p.args]
            points += [{SCHEDULE_KEY: schedule, **first}]
    configs = []
    for point in points:
        fixed = {p.key: p.args[0] for p in space.params_for(point[SCHEDULE_KEY]) if p.fixed}
        configs.append(space.run_config({**fixed, **point, "train.seed": space.seeds[0]}))
    return configs


def check_resources(tune_settings: TuneSettings, machines: list[dict[str, float]]) -> None:
    """Refuse per-trial resources that no machine of the Ray cluster can ever give (a trial runs on one).

    ``check_resources(TuneSettings("val_mAP", gpu=1), [{"CPU": 16.0}])`` raises a UserError: no GPU.
    """
    for name, key, asked in (("cpu", "CPU", tune_settings.cpu), ("gpu", "GPU", tune_settings.gpu)):
        most = max((machine.get(key, 0) for machine in machines), default=0)
        if asked > most:
            where = "the Ray cluster's largest machine has" if len(machines) > 1 else "this Ray machine has"
            raise UserError(
                f"tune.resources.{name}={asked:g} per trial, but {where} {most:g} {key}s; "
                f"lower tune.resources.{name} (--set tune.resources.{name}=...) or add machines"
            )


def check_address(address: str | None, option: str = "--address") -> None:
    """Refuse a Ray address that is malformed or where nothing answers within ADDRESS_TIMEOUT_S.

    None and ``local`` start a Ray of this study's own; ``auto`` is looked up as Ray does (a cluster
    running on this machine); ``HOST:PORT`` is a cluster's GCS, ``ray://HOST[:PORT]`` a Ray Client
    server (port 10001 by default). A TCP connection is tried before ``ray.init``, which would retry
    for minutes.

    ``check_address("127.0.0.1:6399")`` raises ``UserError("no Ray cluster answers at 127.0.0.1:6399 ...")``.
    """
    if address in (None, "", "local"):
        return
    shown, target = address, address
    if address == "auto":
        from study.sweep.ray_private import local_cluster_address

        try:
            target = local_cluster_address()
        except ConnectionError:
            raise UserError(
                f"{option} auto: no Ray cluster runs on this machine; start one with `ray start --head`,"
                f" or leave out {option} to start a Ray of this study's own"
            ) from None
        if target is None:  # Ray moved its lookup; ray.init still reports errors
            return
        shown = f"{target} ({option} auto)"
    rest = target.removeprefix("ray://")
    host, colon, port = rest.rpartition(":")
    if target.startswith("ray://") and not colon:
        host, port = rest, str(RAY_CLIENT_PORT)
    host = host.strip("[]")  # [::1]:6379
    if not (host and "/" not in host and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(
            f"{option} {address!r} is not a Ray address; use auto, HOST:PORT (a cluster's head, "
            "e.g. 10.0.0.5:6379) or ray://HOST:PORT"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as error:
        reason = "no answer" if isinstance(error, TimeoutError) else error.strerror or type(error).__name__
        raise UserError(
            f"no Ray cluster answers at {shown} ({reason} within {ADDRESS_TIMEOUT_S:g} s); start one with"
            f" `ray start --head --port={port}` there, or check {option}"
        ) from None


def check_ray(address: str | None, tune_settings: TuneSettings) -> None:
    """Before anything is created: the Ray to join answers, and a Ray started here can run a trial.

    ``address`` is --address (else RAY_ADDRESS); nothing is checked when this process already joined
    a Ray, where the study runs. A cluster's resources are checked once joined (``check_resources``).
    """
    import ray

    if ray.is_initialized():
        return
    option = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS")
    check_address(address, option)
    if address in (None, "", "local"):  # Ray starts here, with at most this machine's CPUs and GPUs
        import torch

        check_ray_tmpdir()

        check_resources(tune_settings, [{"CPU": os.cpu_count() or 1, "GPU": torch.cuda.device_count()}])


# A Unix socket path holds at most 107 bytes; Ray puts its sockets at
# TMP/ray/session_2026-12-06_21-15-50_222801_PID/sockets/plasma_store (68 bytes after TMP, 7-digit PID).
SOCKET_PATH_MAX = 107
RAY_SOCKET_SUFFIX = len("/ray/session_2026-12-06_21-15-50_222801_1108300/sockets/plasma_store")


def check_ray_tmpdir() -> None:
    """Refuse a RAY_TMPDIR so long that the sockets of a Ray started in it could not be opened."""
    tmp = os.environ.get("RAY_TMPDIR") or "/tmp"
    if len(tmp.encode()) + RAY_SOCKET_SUFFIX > SOCKET_PATH_MAX:
        most = SOCKET_PATH_MAX - RAY_SOCKET_SUFFIX
        raise UserError(
            f"RAY_TMPDIR is {len(tmp.encode())} bytes long; Ray's socket paths inside it would pass the "
            f"{SOCKET_PATH_MAX}-byte limit of Unix sockets: use a RAY_TMPDIR of at most {most} bytes"
        )


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """Lock the study folder while the study runs: a second sweep on it is refused with one line.

    The lock (flock) is on the folder itself, so deleting DIR/.lock does not lift it; the kernel
    releases it when this process ends, however it ends, so a killed sweep leaves nothing stuck.
    DIR/.lock only names the last holder.
    """
    out.mkdir(parents=True, exist_ok=True)
    folder = os.open(out, os.O_RDONLY)  # the lock is the folder's own: deleting .lock cannot lift it
    try:
        with (out / LOCK).open("a+") as file:
            try:
                fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "?"
                raise UserError(
                    f"{out} is in use by another python -m study.sweep (process {holder}); "
                    "wait for it to end, or choose another --out"
                ) from None
            file.truncate(0)
            file.write(f"{os.getpid()}\n")
            file.flush()
            yield
    finally:
        os.close(folder)
