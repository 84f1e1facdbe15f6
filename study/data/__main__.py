"""Check a re-identification data set and print what it holds.

python -m study.data ../shared/data/cuhk03
python -m study.data ~/data/Market-1501-v15.09.15 --format market1501
"""

from __future__ import annotations

import argparse

from study.data.datasets import FORMATS, SPLITS, ReIDDataset, check_query_gallery, read_dataset
from study.data.images import verify_images
from study.errors import cli, description


def summary(dataset: ReIDDataset, detected: bool = False) -> str:
    """A table of identities, images and cameras per split (identity -1, junk, is not counted as one)."""
    how = "detected" if detected else "given"
    lines = [f"data set {dataset.root} (format {dataset.name}, {how})"]
    lines.append(f"{'split':<8} {'identities':>10} {'images':>8} {'cameras':>8}")
    notes = []
    for split in SPLITS:
        samples = dataset.split(split)
        identities = len({s.pid for s in samples} - {-1})
        cameras = len({s.camid for s in samples})
        lines.append(f"{split:<8} {identities:>10,} {len(samples):>8,} {cameras:>8,}")
        junk = sum(s.pid == -1 for s in samples)
        if junk:
            notes.append(f"{split} holds {junk:,} junk images (identity -1), ignored by evaluation")
    return "\n".join(lines + notes)


@cli
def main(argv: list[str] | None = None) -> None:
    """Command line: read ROOT, verify that every image decodes, print the summary."""
    parser = argparse.ArgumentParser(prog="python -m study.data", description=description(__doc__))
    parser.add_argument("root", help="data set folder, or a .csv manifest (path,pid,camid,split)")
    parser.add_argument("--format", default="auto", help=f"auto (default) or one of: {', '.join(FORMATS)}")
    args = parser.parse_args(argv)
    dataset = read_dataset(args.root, args.format)
    check_query_gallery(dataset.query, dataset.gallery)
    verify_images([s.path for split in SPLITS for s in dataset.split(split)])
    print(summary(dataset, detected=args.format == "auto"))


if __name__ == "__main__":
    main()
