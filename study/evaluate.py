"""Evaluate a checkpoint on a data set's query and gallery: mAP, rank-1/5/10 and mINP (re-ranking optional).

python -m study.evaluate runs/x/checkpoints/epoch-0040.pt --data ../shared/data/cuhk03
python -m study.evaluate CKPT --data ROOT --rerank --show 0,5,9 --show-out ranks.png
python -m study.evaluate CKPT --data synthetic   # the test split of the checkpoint's synthetic data set
"""

from __future__ import annotations

import argparse
import dataclasses
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from study import run_folder
from study.config import RunConfig, config_from_dict
from study.data import ImageSet, Sample, data_root, decode_images, normalize, read_dataset
from study.devices import autocast_dtype, uses_channels_last
from study.errors import UserError, cli, description, unknown
from study.files import atomic_write_bytes, check_output_file
from study.metrics import DISTANCES, pairwise_distance, rank_metrics
from study.models import build_model
from study.reranking import k_reciprocal_rerank

TOP_SHOWN = 10
# File name endings --show-out accepts, and the image format each is written in.
SHOW_SUFFIXES = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}


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


# ----------------------------------------------------------------------------- checkpoints


def load_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, torch.Tensor]]:
    """The run config and model state_dict (the EMA weights when the run kept them) of a training
    checkpoint; one-line UserErrors for bad files."""
    checkpoint = run_folder.read_checkpoint(path)
    # With train.ema_decay the run validated its EMA weights: those are the checkpoint's model.
    return config_from_dict(checkpoint["config"]), checkpoint.get("ema", checkpoint["model"])


def num_classes_of(state: dict[str, torch.Tensor]) -> int:
    """Training identities of a ReIDNet state_dict: the output size of the head's last Linear."""
    matrices = [
        v for k, v in state.items() if k.startswith("head.") and k.endswith(".weight") and v.ndim == 2
    ]
    if not matrices:
        raise UserError(
            "the checkpoint's model has no head.*.weight matrix, so its classifier size is unknown"
        )
    return matrices[-1].shape[0]


def model_from_checkpoint(config: RunConfig, state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the configured ReIDNet and load ``state`` (no pre-trained weights: the checkpoint has them)."""
    model = build_model(dataclasses.replace(config.model, weights="none"), num_classes_of(state))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        first = missing[:1] or unexpected[:1] or wrong[:1]
        raise UserError(
            f"the checkpoint's weights do not fit the {config.model.backbone} model of its config"
            f" ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} of the wrong shape;"
            f" first: {first[0]!r})"
        )
    model.load_state_dict(state)
    return model


# ----------------------------------------------------------------------------- ranked-list picture


def ranking_grid(
    query: ImageSet, gallery: ImageSet, dist: torch.Tensor, indices: list[int], top: int = TOP_SHOWN
) -> Image.Image:
    """One row per chosen query: the query, then gallery images in rank order until ``top`` have counted.

    Borders: green for a true match, red for a non-match, grey for junk (same identity and camera,
    or identity -1), which the metrics skip. Captions give the rank among counted images and the pid.
    """
    height, width = query.images.shape[2:]
    pad, border, caption = 4, 3, 14
    cell_w, cell_h = width + 2 * border + pad, height + 2 * border + caption + pad
    rows = [_ranked_row(query, gallery, dist[i], i, top) for i in indices]
    canvas = Image.new("RGB", (cell_w * max(len(r) for r in rows), cell_h * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for row_number, row in enumerate(rows):
        for column, (image, colour, label) in enumerate(row):
            x, y = column * cell_w + pad // 2, row_number * cell_h + pad // 2
            draw.rectangle([x, y, x + width + 2 * border - 1, y + height + 2 * border - 1], fill=colour)
            canvas.paste(
                Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()), (x + border, y + border)
            )
            draw.text((x, y + height + 2 * border + 1), label, fill="black")
    return canvas


def _ranked_row(
    query: ImageSet, gallery: ImageSet, dist_row: torch.Tensor, index: int, top: int
) -> list[tuple[torch.Tensor, str, str]]:
    q_pid, q_cam = int(query.pids[index]), int(query.camids[index])
    row = [(query.images[index], "black", f"q{index} id{q_pid}")]
    counted = 0
    for j in torch.sort(dist_row.cpu(), stable=True).indices.tolist():
        pid, cam = int(gallery.pids[j]), int(gallery.camids[j])
        if pid == -1 or (pid == q_pid and cam == q_cam):
            row.append((gallery.images[j], "grey", f"junk id{pid}"))
        else:
            counted += 1
            colour = "limegreen" if pid == q_pid else "red"
            row.append((gallery.images[j], colour, f"#{counted} id{pid}"))
        if counted == top or len(row) > 3 * top:  # bounded even if junk crowds the top
            break
    return row


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The evaluation command line (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m study.evaluate", description=description(__doc__))
    parser.add_argument("checkpoint", help="a checkpoint written by training (checkpoints/epoch-NNNN.pt)")
    parser.add_argument(
        "--data",
        required=True,
        help="data set root (query and gallery are evaluated), or synthetic: the checkpoint's synthetic set",
    )
    parser.add_argument("--format", default="auto", help="data set format (default: auto)")
    parser.add_argument(
        "--rerank", action="store_true", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3)"
    )
    parser.add_argument("--show", help="comma-separated query indices to draw ranked lists for")
    parser.add_argument(
        "--show-out",
        default="ranking.png",
        help="picture for --show: .png, .jpg, .bmp or .tif (default: ranking.png)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="images per batch (default: the run's eval_batch_size)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available")
    return parser.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> None:
    """Evaluate a checkpoint on a data set's query/gallery and print mAP, rank-1/5/10 and mINP."""
    args = parse_args(argv)
    if args.show is not None:  # before anything is loaded: a bad file name must not cost an evaluation
        check_output_file(args.show_out, "--show-out", SHOW_SUFFIXES)
    config, state = load_checkpoint(args.checkpoint)
    device = _resolve_device(args.device)
    batch_size = args.batch_size if args.batch_size is not None else config.train.eval_batch_size
    if batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {batch_size}")
    model = model_from_checkpoint(config, state).to(device)
    if uses_channels_last(device, config.train.channels_last):
        model.to(memory_format=torch.channels_last)

    dataset = read_dataset(_evaluated_root(args.data, config), args.format)
    show = _parse_show(args.show, len(dataset.query))
    print(
        f"decoding {len(dataset.query)} query and {len(dataset.gallery)} gallery images at "
        f"{config.data.height}x{config.data.width}",
        flush=True,
    )
    query, gallery = (
        _image_set(s, config.data.height, config.data.width) for s in (dataset.query, dataset.gallery)
    )
    dist = query_gallery_distance(
        model,
        query,
        gallery,
        flip=config.train.flip_test,
        distance=config.train.distance,
        batch_size=batch_size,
        device=device,
        dtype=autocast_dtype(device, config.train.precision, config.model.backbone),
        rerank=args.rerank,
        progress=True,
    )
    metrics = rank_metrics(dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank=10)
    name = f"{Path(dataset.root).name} ({dataset.name})"
    print(_report(reported_numbers(metrics), name, len(query), len(gallery), args.rerank))
    if show:
        picture = io.BytesIO()
        ranking_grid(query, gallery, dist, show).save(
            picture, format=SHOW_SUFFIXES[Path(args.show_out).suffix.lower()]
        )
        atomic_write_bytes(args.show_out, picture.getvalue())
        print(f"ranked lists of queries {','.join(map(str, show))} written to {args.show_out}")


def _evaluated_root(data: str, config: RunConfig) -> Path:
    if data != "synthetic":
        return Path(data)
    # The synthetic set the checkpoint's config names (its size and seed), generated as training does.
    return data_root(dataclasses.replace(config.data, root="synthetic"))


def _resolve_device(name: str | None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu")
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _parse_show(text: str | None, num_queries: int) -> list[int]:
    if text is None:
        return []
    try:
        indices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--show must be comma-separated query indices like 0,5,9, got {text!r}") from None
    bad = [i for i in indices if not 0 <= i < num_queries]
    if bad or not indices:
        raise UserError(f"--show indices must be in 0..{num_queries - 1} (the query set), got {text!r}")
    return indices


def _image_set(samples: list[Sample], height: int, width: int) -> ImageSet:
    paths = [s.path for s in samples]
    return ImageSet(
        images=decode_images(paths, height, width),
        pids=torch.tensor([s.pid for s in samples], dtype=torch.int64),
        camids=torch.tensor([s.camid for s in samples], dtype=torch.int64),
        paths=paths,
    )


def _report(summary: dict[str, float], name: str, num_query: int, num_gallery: int, rerank: bool) -> str:
    header = f"{name}: {num_query} query, {num_gallery} gallery images" + (", re-ranked" if rerank else "")
    numbers = "  ".join(
        f"{label} {100 * summary[key]:.2f}"
        for label, key in (("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"), ("rank-10", "rank10"))
    )
    lines = [header, f"{numbers}  mINP {100 * summary['mINP']:.2f}  (%)"]
    if summary["num_skipped_queries"]:
        lines.append(
            f"{summary['num_skipped_queries']} queries skipped: no gallery match outside their camera"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
