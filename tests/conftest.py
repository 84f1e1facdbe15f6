"""Shared fixtures: a tiny synthetic data set and run configs small enough for CPU tests."""

from __future__ import annotations

import os

import pytest

# The tests start Ray clusters of their own and must never log to W&B online, whatever the
# environment says: `python -m pytest` passes as written.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["WANDB_MODE"] = "offline"

from study.config import RunConfig, config_from_dict


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """Where the tiny synthetic data set is generated once per test session."""
    return str(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def tiny_base(synthetic_dir):
    """``tiny_base()``: new model, data and train sections of a tiny, fast run on the synthetic set."""

    def make() -> dict:
        return {
            "model": {"backbone": "mobilenet_v2", "weights": "packaged"},
            "data": {
                "root": "synthetic",
                "synthetic_dir": synthetic_dir,
                "synthetic": {"identities": 32, "cameras": 3, "seed": 0},
                "height": 64,
                "width": 32,
                "val_identities": 6,
            },
            "train": {"batch_size": 16, "eval_batch_size": 64},
        }

    return make


@pytest.fixture
def tiny_config(tiny_base):
    """Build a RunConfig for a tiny, fast run; keyword sections override the defaults."""

    def make(schedule: dict, **sections: dict) -> RunConfig:
        base = tiny_base()
        base["train"]["progress"] = False
        for name, values in sections.items():
            base[name] = {**base.get(name, {}), **values}
        return config_from_dict({**base, "schedule": schedule})

    return make


@pytest.fixture
def train_until():
    """``train_until(config, out, epoch)``: train a run and stop it after ``epoch`` as a kill would."""
    from study import trainer

    class Stopped(Exception):
        pass

    def stop_after(epoch: int):
        def on_epoch(record, checkpoint):
            if record["epoch"] == epoch:
                raise Stopped

        return on_epoch

    def train(config: RunConfig, out, epoch: int) -> None:
        with pytest.raises(Stopped):
            trainer.train_run(config, out, on_epoch=stop_after(epoch))

    return train
