"""The strong-baseline recipe (train.recipe: bot): its preset, overrides, validation, and a run."""

from __future__ import annotations

import pytest

from study.config import RECIPES, RunConfig, config_from_dict
from study.errors import UserError


def test_the_defaults_are_the_papers_protocol():
    config = RunConfig()
    assert config.train.recipe == "none" and config.model.neck == "none"
    assert config.data.sampler == "random" and config.data.pad_crop == 0 and config.data.random_erasing == 0
    assert config.train.label_smoothing == 0 and config.train.triplet_weight == 0
    assert config.train.warmup_epochs == 0 and config.model.last_stride == 2


def test_the_bot_recipe_sets_every_trick_and_explicit_keys_override_it():
    config = config_from_dict({"schedule": {"name": "finetune"}, "train": {"recipe": "bot"}})
    assert config.model.neck == "bnneck" and config.model.last_stride == 1
    assert config.data.sampler == "pk" and config.data.instances_per_identity == 4
    assert config.data.pad_crop == 10 and config.data.random_erasing == 0.5
    assert config.train.label_smoothing == 0.1 and config.train.triplet_weight == 1.0
    assert config.train.triplet_margin == 0.3 and config.train.warmup_epochs == 10
    for section, values in RECIPES["bot"].items():  # every preset value reached its section
        assert {k: getattr(getattr(config, section), k) for k in values} == values
    mine = config_from_dict(
        {"schedule": {"name": "finetune"}, "model": {"last_stride": 2}, "train": {"recipe": "bot"}},
        ["data.random_erasing=0", "train.warmup_epochs=2"],
    )
    assert mine.model.last_stride == 2 and mine.data.random_erasing == 0 and mine.train.warmup_epochs == 2
    assert mine.model.neck == "bnneck"
    # the expanded dict builds the same config again (what a resumed run and W&B see)
    assert config_from_dict(mine.to_dict()).to_dict() == mine.to_dict()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.recipe=bag"], "train.recipe must be one of none, bot, got 'bag'"),
        (["model.neck=bn"], "model.neck must be one of none, bnneck"),
        (["data.sampler=pk", "train.batch_size=30"], "batch_size=30 must be a multiple of 4 with P >= 2"),
        (["data.sampler=pk", "data.instances_per_identity=16", "train.batch_size=16"], "P >= 2"),
        (["data.instances_per_identity=0"], "data.instances_per_identity must be positive"),
        (["data.random_erasing=1.5"], "data.random_erasing is a probability in [0, 1], got 1.5"),
        (["data.pad_crop=-1"], "data.pad_crop must be >= 0"),
        (["train.label_smoothing=1"], "train.label_smoothing must be in [0, 1)"),
        (["train.triplet_weight=-1"], "train.triplet_weight must be >= 0"),
        (["train.warmup_epochs=-2"], "train.warmup_epochs must be >= 0"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(UserError) as error:
        config_from_dict({"schedule": {"name": "finetune"}}, overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------- the recipe in the trainer


def test_a_bnneck_head_evaluates_after_its_batchnorm_and_never_trains_a_shift():
    import torch

    from study.config import ModelConfig
    from study.models import build_model

    model = build_model(ModelConfig(backbone="mobilenet_v2", weights="none", neck="bnneck"), num_classes=5)
    neck, classifier = model.head
    assert [name for name, _ in model.head.named_parameters()] == ["0.weight", "1.weight"]
    assert classifier.bias is None and torch.equal(neck.bias, torch.zeros(1280))
    images = torch.randn(6, 3, 64, 32)
    model.train()
    logits, pooled = model(images, with_pooled=True)
    assert logits.shape == (6, 5) and torch.allclose(pooled, model.pooled(images), atol=1e-6)
    model.eval()
    with torch.no_grad():
        pooled = model.pooled(images)
        assert torch.equal(model.features(images), neck(pooled))  # the test feature is after the BN
        assert not torch.equal(model.features(images), pooled)


def test_last_stride_one_keeps_mobilenet_v2s_last_block_at_a_sixteenth_with_the_same_weights():
    import torch

    from study.config import ModelConfig
    from study.models import build_model

    config = ModelConfig(backbone="mobilenet_v2", weights="packaged")
    strided, kept = build_model(config, 5), build_model(ModelConfig(**{**vars(config), "last_stride": 1}), 5)
    x = torch.randn(2, 3, 64, 32)
    for model in (strided, kept):
        model.eval()
    with torch.no_grad():
        for name in ("B1", "B2", "B3", "B4"):
            x = strided.blocks[name](x)
        assert strided.blocks["B5"](x).shape[2:] == (2, 1) and kept.blocks["B5"](x).shape[2:] == (4, 2)
    pretrained = strided.blocks.state_dict()  # the head is new in each
    assert all(torch.equal(value, kept.blocks.state_dict()[key]) for key, value in pretrained.items())


def test_the_trainer_draws_p_by_k_batches_and_augments_them_repeatably(tiny_config):
    import torch

    from schedules import build_schedule
    from study.data import Augment, load_data, make_sampler
    from study.trainer import TrainBatches

    config = tiny_config({"name": "finetune", "epochs": 1})
    data = load_data(config.data)
    step = build_schedule({"name": "finetune", "epochs": 1}).plan()[0]

    def epoch(augment):
        sampler = make_sampler("pk", data.train.labels, 16, 4)
        batches = TrainBatches(data.train, 16, 0, torch.device("cpu"), sampler=sampler, augment=augment)
        return list(batches.epoch(step))

    plain, augmented = epoch(Augment()), epoch(Augment(pad_crop=4, random_erasing=1.0))
    assert len(plain) > 0
    for _, labels in plain:
        blocks = labels.view(4, 4)
        assert (blocks == blocks[:, :1]).all() and len(set(blocks[:, 0].tolist())) == 4
    again = epoch(Augment(pad_crop=4, random_erasing=1.0))
    for (a, labels_a), (b, labels_b), (p, _) in zip(augmented, again, plain, strict=True):
        assert torch.equal(a, b) and torch.equal(labels_a, labels_b) and a.shape == p.shape
        assert not torch.equal(a, p)


@pytest.mark.slow
def test_a_bot_run_warms_up_adds_the_triplet_loss_and_resumes_exactly(tiny_config, tmp_path, train_until):
    import csv

    import pytest

    import study.trainer as trainer
    from schedules import build_schedule

    schedule = {"name": "incremental_rollback", "period_epochs": 2, "periods": 2}
    # last stride 2: the synthetic images are tiny; every other trick of the recipe is on
    train = {"recipe": "bot", "warmup_epochs": 2, "checkpoint_every": 1}
    config = tiny_config(schedule, model={"last_stride": 2}, train=train)
    assert config.train.triplet_weight == 1.0 and config.data.sampler == "pk"
    assert config.model.neck == "bnneck" and config.data.random_erasing == 0.5
    first = trainer.train_run(config, tmp_path / "a")
    with open(tmp_path / "a" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    planned = [step.lr["B1"] for step in build_schedule(schedule).plan()]
    # epoch 1 at 1/2 of the plan's rate, epoch 2 (the end of the warm-up) on at the plan's
    assert [float(row["lr_B1"]) for row in rows] == pytest.approx([planned[0] / 2, *planned[1:]])
    plain = trainer.train_run(tiny_config(schedule, model={"last_stride": 2}), tmp_path / "plain")
    assert first["final_loss"] != plain["final_loss"]

    train_until(config, tmp_path / "b", 3)
    resumed = trainer.train_run(config, tmp_path / "b", resume=True)
    assert resumed["final_loss"] == first["final_loss"] and resumed["final_val_mAP"] == first["final_val_mAP"]
