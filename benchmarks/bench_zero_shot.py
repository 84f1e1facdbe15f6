"""Zero-shot retrieval: ImageNet backbone features vs a randomly initialised backbone, no training.

    python -m benchmarks.bench_zero_shot --data ../shared/data/cuhk03 [--height 256 --width 128]

Shows how much the pre-trained features are worth before any fine-tuning (the floor every
schedule starts from) and that the evaluation separates good features from random ones.
"""

from __future__ import annotations

import argparse
import time

import torch

from study.config import ModelConfig
from study.data import decode_images, read_dataset
from study.data.images import ImageSet
from study.evaluate.features import evaluate
from study.models import build_model


def image_set(samples, height: int, width: int) -> ImageSet:
    paths = [s.path for s in samples]
    return ImageSet(
        images=decode_images(paths, height, width),
        pids=torch.tensor([s.pid for s in samples]),
        camids=torch.tensor([s.camid for s in samples]),
        paths=paths,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", nargs="+", default=["packaged", "none"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()

    dataset = read_dataset(args.data)
    query = image_set(dataset.query, args.height, args.width)
    gallery = image_set(dataset.gallery, args.height, args.width)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(
        f"{args.data}: {len(query.images)} queries, {len(gallery.images)} gallery, "
        f"{args.height}x{args.width}, {args.backbone}, device {device}"
    )
    for weights in args.weights:
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone=args.backbone, weights=weights), num_classes=1).to(device)
        started = time.perf_counter()
        metrics = evaluate(model, query, gallery, device=device)
        seconds = time.perf_counter() - started
        print(
            f"weights={weights:<9} mAP {100 * metrics['mAP']:5.2f}  rank-1 {100 * metrics['rank1']:5.2f}  "
            f"rank-5 {100 * metrics['rank5']:5.2f}  ({seconds:.1f} s)"
        )


if __name__ == "__main__":
    main()
