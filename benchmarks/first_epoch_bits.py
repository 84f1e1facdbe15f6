"""Train the first epoch of a saved study's run config and print its loss to the last bit, with the
environment that decides those bits: the check that two machines (or thread counts) repeat a run.

    python benchmarks/first_epoch_bits.py docs/results/cuhk03/cuhk03_converged/seed1-b/study.yaml \
        --schedule base_cy --seed 1 --threads 1 --data ../shared/data/cuhk03

The same config, seed and thread count on one kind of processor print the same loss; a study's
epochs.csv holds the loss its trials had at epoch 1 to compare with.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile

from study.config import read_yaml
from study.provenance import cpu_model
from study.search_space import SCHEDULE_KEY, SEED_KEY, parse_search_space
from study.trainer import train_run


class FirstEpochDone(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_yaml")
    parser.add_argument("--schedule", required=True, help="one of the study's schedules, with its settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", help="the data set's root on this machine")
    args = parser.parse_args()
    settings = {k: v for k, v in read_yaml(args.study_yaml).items() if k != "_name"}
    if args.data:
        settings["data"]["root"] = args.data
    config = parse_search_space(settings, "bits").run_config(
        {SCHEDULE_KEY: args.schedule, SEED_KEY: args.seed}
    )
    train = dataclasses.replace(config.train, threads=args.threads, progress=False, checkpoint_every=0)
    config = dataclasses.replace(config, train=train)
    losses = []

    def stop(record, checkpoint):
        losses.append(record["loss"])
        raise FirstEpochDone

    with tempfile.TemporaryDirectory() as out, contextlib.suppress(FirstEpochDone):
        train_run(config, out, on_epoch=stop)
    where = f"{args.threads} thread(s), {cpu_model()}"
    print(f"{args.schedule} seed {args.seed}, {where}: epoch-1 loss {losses[0]!r}")


if __name__ == "__main__":
    main()
