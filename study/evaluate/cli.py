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

import torch
from PIL import Image, ImageDraw

from study.config import RunConfig
from study.data import ImageSet, Sample, data_root, decode_images, read_dataset
from study.devices import autocast_dtype, uses_channels_last
from study.errors import UserError, cli, description
from study.evaluate.checkpoint import load_checkpoint, model_from_checkpoint
from study.evaluate.features import query_gallery_distance, reported_numbers
from study.evaluate.metrics import rank_metrics
from study.files import atomic_write_bytes, check_output_file

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
