"""The command ``python -m study.report``: its options, and which studies it reads, retrains and writes."""

from __future__ import annotations

import argparse
from pathlib import Path

from study import report
from study.errors import UserError, cli, description
from study.report.document import PLOTS, write_combined_report, write_report
from study.report.loading import load_study, merge_pieces


@cli
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=description(report.__doc__))
    parser.add_argument("folders", nargs="+", metavar="DIR", help="a folder made by python -m study.sweep")
    parser.add_argument(
        "--final",
        action="store_true",
        help="retrain the best configuration and fine-tuning on the test protocol, once per seed (slow)",
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", metavar="N", help="seeds for --final (default: the study's)"
    )
    parser.add_argument(
        "--jobs", type=int, metavar="N", help="--final runs trained at once, in processes sharing the machine"
    )
    parser.add_argument(
        "--out", type=Path, help="the report's file, plots in a folder named after it (default DIR/report.md)"
    )
    args = parser.parse_args(argv)
    for option, value in (("--seeds", args.seeds), ("--jobs", args.jobs)):
        if value is not None and not args.final:
            raise UserError(f"{option} is an option of the --final retraining; add --final")
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    if len(args.folders) > 1 and args.out is None:
        raise UserError("several study folders make one report: name its file with --out FILE")
    studies = [load_study(folder) for folder in args.folders]
    for study in studies:
        print(f"{study.folder}: {len(study.results)} trials, {len(study.epochs)} epoch rows", flush=True)
    studies = merge_pieces(studies)
    for study in studies:
        if study.pieces:
            pieces = f"{len(study.pieces)} folders reported as one"
            print(f"study {study.name}: {pieces}, {len(study.results)} trials in all")
    reports = []
    for study in studies:
        final = None
        if args.final and study.prefix == "test":
            print(f"{study.folder} was evaluated on the test protocol already: --final retrains nothing")
        elif args.final:
            from study.report.final import retrain_final  # trains models: the report itself only reads

            final = retrain_final(study, args.seeds, args.jobs or 1)
        reports.append((study, final))
    if args.out is None:
        path = write_report(*reports[0])
        print(f"wrote {path} and plots in {reports[0][0].folder / PLOTS}")
    else:
        path = write_combined_report(reports, args.out)
        print(f"wrote {path} and plots in {args.out.parent / args.out.stem}")
