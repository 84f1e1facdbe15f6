"""``python -m study.train CONFIG.yaml --out DIR [--set key=value ...] [--resume]``: one training run."""

from __future__ import annotations

import argparse
import json
import sys

from study.config import load_config
from study.errors import cli, description


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.train", description=description(__doc__))
    parser.add_argument("config", help="run config YAML (sections model, data, schedule, train)")
    parser.add_argument("--out", required=True, help="run folder: metrics.csv, summary.json, checkpoints/")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override, e.g. schedule.period_epochs=2",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    args = parser.parse_args(argv)
    config = load_config(args.config, args.set)

    from study.trainer import Diverged, train_run  # after validation: importing torch takes a moment

    try:
        summary = train_run(config, args.out, resume=args.resume)
    except Diverged as error:
        print(f"error: {error}; lower the learning rates (summary.json: status diverged)", file=sys.stderr)
        raise SystemExit(1) from None
    shown = {k: v for k, v in summary.items() if k != "config"}
    print(json.dumps(shown, indent=2))
    print(f"wrote {args.out}/metrics.csv, {args.out}/summary.json, {args.out}/checkpoints/")


if __name__ == "__main__":
    main()
