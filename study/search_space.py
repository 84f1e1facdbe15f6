"""Search-space files: a run config plus ``search`` and ``tune`` sections, parsed and validated.

The format (see study/sweep/__init__.py for how a study runs it)::

    search:
      schedules: [finetune, incremental_rollback]   # compared side by side, round robin (grid: in turn)
      variants:                                      # optional: named variants, listed in schedules
        keep_B3: {name: block_order, retained: [[], [B3]]}
      seeds: [0, 1]                                  # every sampled configuration runs once per seed
      paired: true                                   # optional: each sampled value set runs every schedule
      params:                                        # dotted run-config key: distribution or fixed value
        schedule.lr: {loguniform: [3.0e-3, 3.0e-2]}  # also uniform, int, intlog (bounds inclusive), choice
        train.batch_size: {choice: [16, 32]}
        schedule.head_lr: 0.1                        # fixed
      when:                                          # parameters of one schedule only
        finetune: {schedule.epochs: 8}
    tune:
      metric: val_mAP            # val_/test_ + mAP, rank1, rank5, rank10 or mINP
      mode: max
      sampler: tpe               # Optuna's TPE (default), or grid: every combination of the choices
      num_samples: 6             # sampled configurations; trials = num_samples x len(seeds)
      max_concurrent: 2          # at most this many trials at once (default: as resources allow)
      resources: {cpu: 1, gpu: 0}                    # per trial; a fractional gpu shares one
      asha: {grace_periods: 1, reduction_factor: 2}  # early stopping on period ends; omit to disable
      seed: 0                    # of the TPE sampler
      startup_trials: 10         # configurations sampled at random before TPE takes over

With ``tune.sampler: grid`` every tuned value must be a ``choice``: the study runs, schedule by schedule
in ``search.schedules`` order, every combination of the choices that schedule uses (``SearchSpace.grid``),
each once per seed. ``tune.num_samples`` is then the grid's size (leave it out); ``tune.seed`` and
``startup_trials`` are TPE's and mean nothing; ``search.paired`` is allowed and adds nothing: each
schedule runs at every combination of its choices, so schedules sharing a parameter meet at each value.

The base ``schedule`` section is the first compared schedule's; a compared schedule keeps the base
parameters it also has and gets the others from ``params`` (those it lacks are dropped) and ``when``.
A variant is a schedule section under a label of its own (one schedule with several settings, such as
the paper's Table 1 ablation): its parameters override the base ones, and results are grouped by label.
``${NAME}`` in any value is replaced by the environment variable NAME (``data.root: ${MARKET1501_ROOT}``),
except secrets such as ``${WANDB_API_KEY}``: values end up in DIR/study.yaml, run configs and W&B.
Everything is checked here, before Ray starts: bad input is one line and exit status 2.

One module, though over 600 lines: it reads top to bottom as the format above, the dataclasses a
file becomes, then one parser with its checks per section (``search``, then ``tune``), so that the
rule for a key is found next to the key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import os
import re
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.config import (
    SWEEP_SECTIONS,
    RunConfig,
    apply_overrides,
    check_seed,
    config_from_dict,
    read_yaml,
    schedule_type,
    set_dotted,
)
from study.errors import UserError, closest, unknown

SCHEDULE_KEY = "schedule.name"
SEED_KEY = "train.seed"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "intlog", "choice")
SEARCH_KEYS = ("schedules", "variants", "seeds", "params", "when", "paired")
TUNE_KEYS = (
    "metric",
    "mode",
    "sampler",
    "num_samples",
    "max_concurrent",
    "resources",
    "asha",
    "seed",
    "startup_trials",
)
SAMPLERS = ("tpe", "grid")
RESOURCE_KEYS = ("cpu", "gpu")
ASHA_KEYS = ("grace_periods", "reduction_factor")
RETRIEVAL_METRICS = ("mAP", "rank1", "rank5", "rank10", "mINP")
# Never expanded: the value would be saved in study.yaml and every trial's config, and logged to W&B.
SECRET_VARIABLES = ("WANDB_API_KEY",)


@dataclass(frozen=True)
class Param:
    """One searched run-config key: a distribution (uniform, loguniform, int, intlog, choice) or fixed value.

    >>> parse_param("schedule.lr", {"loguniform": [1e-3, 1e-1]}, "search.params").kind
    'loguniform'
    """

    key: str
    kind: str  # one of DISTRIBUTIONS, or "fixed"
    args: tuple  # (low, high), the choices, or (value,)

    @property
    def fixed(self) -> bool:
        return self.kind == "fixed"

    @property
    def schedule_param(self) -> str | None:
        """The schedule parameter this key sets (``schedule.lr`` -> ``lr``), or None."""
        section, _, rest = self.key.partition(".")
        return rest if section == "schedule" else None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for a value."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.args))
        low, high = self.args
        if self.kind in ("int", "intlog"):
            return trial.suggest_int(self.key, low, high, log=self.kind == "intlog")
        return trial.suggest_float(self.key, low, high, log=self.kind == "loguniform")


@dataclass(frozen=True)
class Asha:
    grace_periods: int = 1
    reduction_factor: float = 2


@dataclass(frozen=True)
class TuneSettings:
    metric: str
    mode: str = "max"
    num_samples: int = 1
    max_concurrent: int | None = None
    cpu: float = 1
    gpu: float = 0
    asha: Asha | None = None
    seed: int = 0
    startup_trials: int = 10
    sampler: str = "tpe"  # one of SAMPLERS


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file: the base run config, what to search, and how to run the trials."""

    name: str
    base: dict[str, Any]
    schedules: tuple[str, ...]  # registered schedule names or variant labels
    seeds: tuple[int, ...]
    params: tuple[Param, ...]
    when: dict[str, tuple[Param, ...]]
    tune: TuneSettings
    source: dict[str, Any]  # the resolved file, saved as DIR/study.yaml
    variants: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # label -> schedule section
    # Configurations come in groups of one per schedule sharing their sampled values (a fair comparison).
    paired: bool = False

    @property
    def num_trials(self) -> int:
        return self.tune.num_samples * len(self.seeds)

    def params_for(self, schedule: str) -> list[Param]:
        """The parameters a trial of ``schedule`` samples or sets, in file order."""
        fields = label_fields(schedule, self.variants)
        common = [p for p in self.params if p.schedule_param is None or p.schedule_param in fields]
        return common + list(self.when.get(schedule, ()))

    def grid(self) -> list[dict[str, Any]]:
        """The configurations of ``tune.sampler: grid``: schedule by schedule (``search.schedules`` order)
        every combination of the choices it uses (its parameters in file order, the last varying
        fastest), as the schedule key and the chosen values; fixed values are not listed.

        Comparing finetune and base_cy, ``when: {base_cy: {schedule.period_epochs: {choice: [30, 60]}}}``
        gives ``[{"schedule.name": "finetune"}, {"schedule.name": "base_cy", "schedule.period_epochs": 30},
        {"schedule.name": "base_cy", "schedule.period_epochs": 60}]``.
        """
        points = []
        for schedule in self.schedules:
            tuned = [p for p in self.params_for(schedule) if not p.fixed]
            if any(p.kind != "choice" for p in tuned):
                raise ValueError(f"a grid needs choices only; {schedule} samples {[p.key for p in tuned]}")
            for values in itertools.product(*(p.args for p in tuned)):
                points.append(
                    {SCHEDULE_KEY: schedule, **{p.key: v for p, v in zip(tuned, values, strict=True)}}
                )
        return points

    def searched_keys(self) -> list[str]:
        """Every searched key (tuned or fixed, any schedule), in file order."""
        every = [*self.params, *(p for params in self.when.values() for p in params)]
        return list(dict.fromkeys(p.key for p in every))

    def tuned_keys(self) -> list[str]:
        """The keys Optuna samples, the schedule first when several are compared."""
        every = [*self.params, *(p for params in self.when.values() for p in params)]
        tuned = [p.key for p in every if not p.fixed]
        return list(dict.fromkeys(([SCHEDULE_KEY] if len(self.schedules) > 1 else []) + tuned))

    def base_for(self, schedule: str) -> dict[str, Any]:
        """The base run config with its schedule section switched to ``schedule`` (a name or a variant)."""
        data = copy.deepcopy(self.base)
        variant = copy.deepcopy(self.variants.get(schedule, {"name": schedule}))
        fields = schedule_fields(variant["name"])
        kept = {k: v for k, v in data["schedule"].items() if k in fields}
        data["schedule"] = {**kept, **variant}
        return data

    def run_config(self, sampled: dict[str, Any]) -> RunConfig:
        """The run config of one trial: the base, the sampled schedule and values, no progress bars.

        For example ``space.run_config({"schedule.name": "base_cy", "schedule.lr": 0.02, "train.seed": 1})``.
        """
        data = self.base_for(sampled.get(SCHEDULE_KEY, self.schedules[0]))
        for key, value in sampled.items():
            if key != SCHEDULE_KEY:
                set_dotted(data, key, value)
        set_dotted(data, "train.progress", False)
        return config_from_dict(data)


def load_search_space(path: str | Path, overrides: list[str] = ()) -> SearchSpace:
    """Read, override (``--set``), expand ``${VAR}`` and validate a search-space file.

    For example ``load_search_space("search_spaces/demo.yaml", ["tune.num_samples=3"]).num_trials``
    is 6 (two seeds each).
    """
    data = apply_overrides(read_yaml(path), overrides)
    if any(o.partition("=")[0].strip() == "search.schedules" for o in overrides):
        _drop_conditions_of_uncompared_schedules(data, {o.partition("=")[0].strip() for o in overrides})
    data = expand_env(data)
    absolutize_paths(data)
    return parse_search_space(data, Path(path).stem)


def expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${NAME}`` in every string with the environment variable NAME (one-line error when unset).

    With MARKET1501_ROOT=/data/Market-1501, ``expand_env({"data": {"root": "${MARKET1501_ROOT}"}})`` is
    ``{'data': {'root': '/data/Market-1501'}}``.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name in SECRET_VARIABLES:
            raise UserError(
                f"{where} uses ${{{name}}}, a secret that would be saved with the study and its runs; "
                f"remove it: W&B reads {name} from the environment itself"
            )
        if name not in os.environ:
            raise UserError(
                f"{where} uses ${{{name}}}, which is not set; export {name}=VALUE or pass --set {where}=VALUE"
            )
        return os.environ[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", replace, value)


def absolutize_paths(data: dict[str, Any]) -> None:
    """Make the config's paths absolute: trials run with the trial folder as working directory."""
    sections = {s: data.get(s) if isinstance(data.get(s), dict) else {} for s in ("data", "model")}
    data_section, model = sections["data"], sections["model"]
    for key in ("synthetic_dir", "cache_dir"):
        if isinstance(data_section.get(key), str):
            data_section[key] = os.path.abspath(data_section[key])
    if isinstance(data_section.get("root"), str) and data_section["root"] != "synthetic":
        data_section["root"] = os.path.abspath(data_section["root"])
    weights = model.get("weights")
    if isinstance(weights, str) and weights not in ("imagenet", "packaged", "none"):
        model["weights"] = os.path.abspath(weights)


def _drop_conditions_of_uncompared_schedules(data: dict[str, Any], overridden: set[str]) -> None:
    """After ``--set search.schedules=[...]``: drop the file's ``when`` entries of the schedules left out.

    A study run in pieces (some schedules here, the others on another machine) needs no edited copy
    of its file; ``when`` entries given with ``--set`` are kept, so that a wrong one is still an error.
    """
    search = data.get("search")
    if "search.when" in overridden or not isinstance(search, dict):
        return
    if not isinstance(search.get("when"), dict):
        return
    compared = search.get("schedules")
    if not isinstance(compared, list):
        return  # validation says what is wrong
    compared = {str(s) for s in compared}
    dropped = [
        name
        for name in search["when"]
        if str(name) not in compared and not any(o.startswith(f"search.when.{name}") for o in overridden)
    ]
    for name in dropped:
        del search["when"][name]
    if dropped:
        print(f"note: search.when of {', '.join(map(str, dropped))} dropped: not compared", file=sys.stderr)


def parse_search_space(data: dict[str, Any], name: str) -> SearchSpace:
    """Validate the ``search`` and ``tune`` sections against the run config and the schedules."""
    base = {k: v for k, v in data.items() if k not in SWEEP_SECTIONS}
    base_config = config_from_dict(base)  # unknown sections and bad values of the base config
    base = base_config.to_dict()
    search = _mapping(data.get("search"), "search", SEARCH_KEYS)
    variants = _variants(search.get("variants"))
    schedules = _schedules(search.get("schedules", [base_config.schedule["name"]]), variants)
    seeds = _seeds(search.get("seeds", [base_config.train.seed]))
    params = _params(search.get("params"), "search.params", schedules, variants)
    when = _when(search.get("when"), schedules, params, variants)
    tune = _tune(data.get("tune"), base_config.data.evaluate_on, len(schedules))
    paired = search.get("paired", False)
    if not isinstance(paired, bool):
        raise UserError(f"search.paired must be true or false, got {paired!r}")
    if paired and tune.sampler == "tpe" and tune.num_samples % len(schedules):
        raise UserError(
            f"search.paired runs every schedule at each sampled value set: tune.num_samples="
            f"{tune.num_samples} must be a multiple of the {len(schedules)} schedules"
        )
    space = SearchSpace(name, base, schedules, seeds, params, when, tune, data, variants, paired)
    if tune.sampler == "grid":
        space = _sized_grid(space, (data.get("tune") or {}).get("num_samples"))
    _check_search_values(space)
    _check_asha_budgets(space)
    return space


def parse_param(key: str, spec: Any, where: str) -> Param:
    """Parse ``{kind: [low, high]}``, ``{choice: [...]}`` or a fixed value for the run-config ``key``."""
    where = f"{where}.{key}"
    if not isinstance(spec, dict):
        return Param(key, "fixed", (spec,))
    if len(spec) != 1:
        raise UserError(f"{where} must be one distribution such as {{uniform: [0.1, 0.5]}}, got {spec}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise UserError(f"{where}: {unknown('distribution', str(kind), DISTRIBUTIONS)}")
    if kind == "choice":
        return Param(key, kind, _choices(args, where))
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(v) for v in args)):
        raise UserError(f"{where}: {kind} needs [low, high] numbers, got {args!r}")
    low, high = args
    if kind in ("int", "intlog") and not all(isinstance(v, int) for v in args):
        raise UserError(f"{where}: {kind} needs whole-number bounds, got {args!r}")
    if low >= high:
        raise UserError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if kind in ("loguniform", "intlog") and low <= 0:
        raise UserError(f"{where}: {kind} needs bounds > 0, got [{low}, {high}]")
    if kind in ("uniform", "loguniform"):
        low, high = float(low), float(high)
    return Param(key, kind, (low, high))


def schedule_fields(name: str) -> tuple[str, ...]:
    """The parameters of a registered schedule (its dataclass fields)."""
    return tuple(f.name for f in dataclasses.fields(schedule_type(name)) if f.init)


def label_fields(label: str, variants: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """The parameters of a compared schedule, given by its registered name or a variant label."""
    return schedule_fields(variants[label]["name"] if label in variants else label)


def _mapping(value: Any, where: str, valid: tuple[str, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {value!r}")
    for key in value:
        if key not in valid:
            raise UserError(f"unknown key {where}.{key}{closest(str(key), valid)}; valid: {', '.join(valid)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _choices(args: Any, where: str) -> tuple:
    if not isinstance(args, list) or not args:
        raise UserError(f"{where}: choice needs a non-empty list, got {args!r}")
    for value in args:
        if not (value is None or isinstance(value, str | int | float | bool)):
            raise UserError(f"{where}: choice values must be numbers, strings or booleans, got {value!r}")
    if len(set(map(repr, args))) != len(args):
        raise UserError(f"{where}: choice lists a value twice: {args}")
    return tuple(args)


def _variants(value: Any) -> dict[str, dict[str, Any]]:
    from schedules import registered

    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"search.variants must map labels to schedule sections, got {value!r}")
    variants = {}
    for label, section in value.items():
        where = f"search.variants.{label}"
        if not isinstance(section, dict) or not isinstance(section.get("name"), str):
            raise UserError(f"{where} must be a schedule section with a name, such as {{name: block_order}}")
        if label in registered():
            raise UserError(f"{where}: {label!r} names a registered schedule; give the variant another label")
        schedule_type(section["name"])  # unknown names: one line with the registered ones
        fields = schedule_fields(section["name"])
        for key in section:
            if key != "name" and key not in fields:
                name, hint = section["name"], closest(str(key), fields)
                valid = ", ".join(fields)
                raise UserError(f"{where}: schedule {name!r} has no parameter {key!r}{hint}; valid: {valid}")
        variants[str(label)] = dict(section)
    return variants


def _schedules(value: Any, variants: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"search.schedules must be a non-empty list of schedule names, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"search.schedules names a schedule twice: {value}")
    for name in value:
        if name not in variants:
            schedule_type(name)  # unknown names: one line with the registered ones
    unused = [label for label in variants if label not in value]
    if unused:
        raise UserError(f"search.variants: {', '.join(unused)} not listed in search.schedules")
    return tuple(value)


def _seeds(value: Any) -> tuple[int, ...]:
    integers = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not value or not integers:
        raise UserError(f"search.seeds must be a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise UserError(f"search.seeds lists a seed twice: {value}")
    for seed in value:
        check_seed(seed, "search.seeds")
    return tuple(value)


def _params(
    value: Any, where: str, schedules: tuple[str, ...], variants: dict[str, dict[str, Any]]
) -> tuple[Param, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise UserError(f"{where} must map dotted run-config keys to distributions, got {value!r}")
    params = []
    for key, spec in value.items():
        _check_key(str(key), where, schedules, variants)
        params.append(parse_param(str(key), spec, where))
    return tuple(params)


def _check_key(key: str, where: str, schedules: tuple[str, ...], variants: dict[str, dict[str, Any]]) -> None:
    if key == SCHEDULE_KEY:
        raise UserError(f"{where}.{key}: list the compared schedules in search.schedules instead")
    if key == SEED_KEY:
        raise UserError(f"{where}.{key}: list the seeds in search.seeds instead")
    section, _, rest = key.partition(".")
    if section == "schedule":
        fields = sorted({f for s in schedules for f in label_fields(s, variants)})
        if rest not in fields:
            raise UserError(
                f"{where}: no compared schedule ({', '.join(schedules)}) has a parameter {rest!r}"
                f"{closest(rest, fields)}; valid: {', '.join(fields)}"
            )
        return
    _check_run_key(key, where)


def _check_run_key(key: str, where: str) -> None:
    cls: Any = RunConfig
    parts = key.split(".")
    if len(parts) < 2:
        raise UserError(f"{where}: {key!r} must be a dotted run-config key such as train.batch_size")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            path = ".".join(parts[: depth + 1])
            valid = ", ".join(names)
            raise UserError(f"{where}: unknown config key {path!r}{closest(part, names)}; valid: {valid}")
        hint = typing.get_type_hints(cls)[part]
        last = depth == len(parts) - 1
        if last and dataclasses.is_dataclass(hint):
            raise UserError(f"{where}: {key!r} is a section; name one of its keys")
        if not last and not dataclasses.is_dataclass(hint):
            raise UserError(f"{where}: {'.'.join(parts[: depth + 1])!r} is not a section")
        cls = hint


def _when(
    value: Any, schedules: tuple[str, ...], params: tuple[Param, ...], variants: dict[str, dict[str, Any]]
) -> dict[str, tuple[Param, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"search.when must map schedule names to parameters, got {value!r}")
    when = {}
    common = {p.key for p in params}
    for schedule, entries in value.items():
        if schedule not in schedules:
            raise UserError(f"search.when: {unknown('compared schedule', str(schedule), schedules)}")
        where = f"search.when.{schedule}"
        if not isinstance(entries, dict):
            raise UserError(f"{where} must map dotted run-config keys to distributions, got {entries!r}")
        fields = label_fields(schedule, variants)
        for key in entries:
            section, _, rest = str(key).partition(".")
            if section == "schedule" and rest not in fields and key != SCHEDULE_KEY:
                raise UserError(
                    f"{where}: schedule {schedule!r} has no parameter {rest!r}{closest(rest, fields)}; "
                    f"valid: {', '.join(fields)}"
                )
            if key in common:
                raise UserError(f"{where}.{key} is also in search.params; keep one of them")
        when[schedule] = _params(entries, where, (schedule,), variants)
    return when


def _tune(value: Any, evaluate_on: str, num_schedules: int) -> TuneSettings:
    tune = _mapping(value, "tune", TUNE_KEYS)
    metrics = [f"{evaluate_on}_{m}" for m in RETRIEVAL_METRICS]
    metric = tune.get("metric", metrics[0])
    if metric not in metrics:
        raise UserError(f"tune.metric: {unknown('metric', str(metric), metrics)}")
    mode = tune.get("mode", "max")
    if mode not in ("max", "min"):
        raise UserError(f"tune.mode must be max or min, got {mode!r}")
    sampler = tune.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise UserError(f"tune.sampler: {unknown('sampler', str(sampler), SAMPLERS)}")
    num_samples = _positive_int(tune.get("num_samples", num_schedules), "tune.num_samples")
    if sampler == "tpe" and num_samples < num_schedules:  # a grid's size is checked with the grid
        raise UserError(
            f"tune.num_samples={num_samples} is fewer than the {num_schedules} compared schedules; "
            "each schedule needs at least one configuration"
        )
    max_concurrent = tune.get("max_concurrent")
    if max_concurrent is not None:
        max_concurrent = _positive_int(max_concurrent, "tune.max_concurrent")
    resources = _mapping(tune.get("resources"), "tune.resources", RESOURCE_KEYS)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    if not _is_number(cpu) or cpu <= 0:
        raise UserError(f"tune.resources.cpu must be a positive number, got {cpu!r}")
    if not _is_number(gpu) or gpu < 0:
        raise UserError(f"tune.resources.gpu must be a number >= 0, got {gpu!r}")
    if gpu > 1 and gpu != int(gpu):
        raise UserError(f"tune.resources.gpu above 1 must be a whole number of GPUs, got {gpu}")
    asha = None
    if tune.get("asha") is not None:
        settings = _mapping(tune["asha"], "tune.asha", ASHA_KEYS)
        grace = _positive_int(settings.get("grace_periods", 1), "tune.asha.grace_periods")
        factor = settings.get("reduction_factor", 2)
        if not _is_number(factor) or factor <= 1:
            raise UserError(f"tune.asha.reduction_factor must be a number > 1, got {factor!r}")
        asha = Asha(grace, factor)
    seed = tune.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise UserError(f"tune.seed must be an integer, got {seed!r}")
    check_seed(seed, "tune.seed")
    startup = _positive_int(tune.get("startup_trials", 10), "tune.startup_trials")
    return TuneSettings(metric, mode, num_samples, max_concurrent, cpu, gpu, asha, seed, startup, sampler)


def _sized_grid(space: SearchSpace, num_samples: Any) -> SearchSpace:
    """Refuse a grid over anything but choices, or of another size than ``tune.num_samples`` says;
    return the space with num_samples set to the grid's size."""
    for schedule in space.schedules:
        for param in space.params_for(schedule):
            if not param.fixed and param.kind != "choice":
                where = "search.params" if param in space.params else f"search.when.{schedule}"
                raise UserError(
                    f"{where}.{param.key} is {param.kind}, but tune.sampler: grid needs a choice: "
                    f"list its values as {{choice: [...]}}, or use tune.sampler: tpe"
                )
    size = len(space.grid())
    if num_samples is not None and num_samples != size:
        raise UserError(
            f"tune.num_samples={num_samples}, but the grid has {size} configurations; "
            "leave tune.num_samples out (a grid runs each of its configurations once)"
        )
    return dataclasses.replace(space, tune=dataclasses.replace(space.tune, num_samples=size))


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{where} must be a positive integer, got {value!r}")
    return value


def _check_asha_budgets(space: SearchSpace) -> None:
    """Under ASHA a rung compares trials at the end of their period g (g = grace_periods ×
    reduction_factor^k): that must be one epoch for every trial it compares (else it compares
    budgets, not configurations), and the first rung must not come before a tuned schedule
    parameter first changes the plan (else it is blind to it: retained_lr acts from period 2)."""
    if space.tune.asha is None:
        return
    grace, factor = space.tune.asha.grace_periods, space.tune.asha.reduction_factor
    rungs: dict[int, dict[int, str]] = {}  # rung (periods) -> {epoch it falls at: which trial}
    for schedule in space.schedules:
        params = space.params_for(schedule)
        reference = {p.key: p.args[0] for p in params}  # every value at its first bound or choice
        variations = [(None, None)] + [(p, v) for p in params if not p.fixed for v in p.args[1:]]
        reference_plan: list = []
        for param, value in variations:
            data = space.base_for(schedule)
            for key, setting in (reference | ({param.key: value} if param else {})).items():
                set_dotted(data, key, setting)
            plan = config_from_dict(data).built_schedule.plan()
            reference_plan = reference_plan or plan
            what = schedule + (f" with {param.key}={value!r}" if param else "")
            ends = [step.epoch for step in plan if step.last_in_period]
            rung = grace
            while rung <= len(ends):
                rungs.setdefault(rung, {}).setdefault(ends[rung - 1], what)
                rung = max(rung + 1, round(rung * factor))
            if param is None or param.schedule_param is None or not ends:
                continue
            acts = next((a.epoch for a, b in zip(plan, reference_plan, strict=False) if a != b), None)
            first_rung = ends[min(grace, len(ends)) - 1]
            if acts is not None and acts > first_rung:
                needed = next((i + 1 for i, end in enumerate(ends) if end >= acts), len(ends))
                raise UserError(
                    f"tune.asha's first rung (the end of period {grace}, epoch {first_rung} of {schedule}) "
                    f"comes before {param.key} acts (from epoch {acts}): set tune.asha.grace_periods "
                    f"to {needed} or more, or drop tune.asha"
                )
    for rung, epochs in sorted(rungs.items()):
        if len(epochs) > 1:
            (a, first), (b, second) = list(epochs.items())[:2]
            raise UserError(
                f"tune.asha would compare trials at unequal budgets: the end of period {rung} is epoch {a} "
                f"for {first} but {b} for {second}; drop tune.asha to compare them (schedule.budget_epochs "
                "keeps every period length at one budget), or compare only equal period lengths under it"
            )


def _check_search_values(space: SearchSpace) -> None:
    """Build every schedule's config with each bound and choice, so bad values fail before any trial."""
    for schedule in space.schedules:
        for param in [None, *space.params_for(schedule)]:
            for value in param.args if param else [None]:
                data = space.base_for(schedule)
                if param is not None:
                    set_dotted(data, param.key, value)
                try:
                    config_from_dict(data).built_schedule  # noqa: B018 (built to be checked)
                except UserError as error:
                    what = f"{param.key}={value!r}" if param else "the base config"
                    raise UserError(f"search: {what} with schedule {schedule}: {error}") from None
