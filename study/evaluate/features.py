"""Image features of a model, the query-gallery distances and the evaluation's reported numbers:
mAP, rank-1/5/10 and mINP (``evaluate``), as the trainer validates and the command evaluates."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.data import ImageSet, normalize
from study.errors import unknown
from study.evaluate.metrics import DISTANCES, pairwise_distance, rank_metrics
from study.evaluate.reranking import k_reciprocal_rerank


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    flip: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: str | None = None,
) -> torch.Tensor:
    """L2-normalised float32 features [N, D] on ``device`` of uint8 images [N, 3, H, W].

    The feature is ``model.features(img)``, plus that of the mirrored image when ``flip``. The model
    runs in eval mode and every submodule's train/eval mode is restored afterwards. ``device``
    defaults to the model's; ``dtype`` (e.g. torch.bfloat16) turns on autocast; ``progress`` names
    a progress bar to show.

    For example, ``extract_features(model, query.images, batch_size=128, dtype=torch.bfloat16)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("no images to extract features from")
    device = _model_device(model) if device is None else torch.device(device)
    use_autocast = dtype is not None and dtype != torch.float32
    channels_last = _is_channels_last(model)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        out = None
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=progress, unit="batch", leave=False, dynamic_ncols=True)
        for start in starts:
            batch = normalize(images[start : start + batch_size].to(device, non_blocking=True))
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype, enabled=use_autocast):
                features = model.features(batch).float()
                if flip:
                    features = features + model.features(batch.flip(-1)).float()
            if out is None:
                out = torch.empty((len(images), features.shape[1]), dtype=torch.float32, device=device)
            out[start : start + len(batch)] = F.normalize(features, dim=1)
        return out
    finally:
        for module, training in modes:
            module.training = training


def query_gallery_distance(
    model: nn.Module,
    query: ImageSet,
    gallery: ImageSet,
    *,
    flip: bool = True,
    distance: str = "euclidean",
    batch_size: int = 256,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    rerank: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """Query-gallery distances [Q, G] of the model's features, k-reciprocal re-ranked when ``rerank``."""
    if distance not in DISTANCES:
        raise unknown("distance", distance, DISTANCES)
    options = {"batch_size": batch_size, "flip": flip, "device": device, "dtype": dtype}
    q_features = extract_features(
        model, query.images, **options, progress="query features" if progress else None
    )
    g_features = extract_features(
        model, gallery.images, **options, progress="gallery features" if progress else None
    )
    dist = pairwise_distance(q_features, g_features, distance)
    if not rerank:
        return dist
    q_q = pairwise_distance(q_features, q_features, distance)
    g_g = pairwise_distance(g_features, g_features, distance)
    reranked = k_reciprocal_rerank(*(d.cpu().numpy() for d in (dist, q_q, g_g)))
    return torch.from_numpy(reranked).to(dist.device)


def evaluate(model: nn.Module, query: ImageSet, gallery: ImageSet, **options: Any) -> dict[str, float]:
    """mAP, rank1, rank5, rank10 and mINP in [0, 1] (Python floats), plus num_skipped_queries.

    ``options`` are those of ``query_gallery_distance`` (flip, distance, batch_size, device, dtype,
    rerank, progress). For example,
    ``evaluate(model, data.query, data.gallery, device="cuda", dtype=torch.bfloat16)["mAP"]``
    gives a float such as 0.7701.
    """
    dist = query_gallery_distance(model, query, gallery, **options)
    ranked = rank_metrics(dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10)
    return reported_numbers(ranked)


def reported_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The reported numbers of a rank_metrics result (max_rank >= 10)."""
    cmc = metrics["cmc"]
    return {
        "mAP": float(metrics["mAP"]),
        "rank1": float(cmc[0]),
        "rank5": float(cmc[4]),
        "rank10": float(cmc[9]),
        "mINP": float(metrics["mINP"]),
        "num_skipped_queries": int(metrics["num_skipped_queries"]),
    }


def _is_channels_last(model: nn.Module) -> bool:
    """Whether the model's convolutions are kept channels_last: its images should be too."""
    conv = next((p for p in model.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)), None)
    return conv is not None and conv.is_contiguous(memory_format=torch.channels_last)


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
