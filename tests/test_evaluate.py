"""Feature extraction, evaluate(), k-reciprocal re-ranking, and the evaluation CLI on a tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from study.config import config_from_dict
from study.data import IMAGENET_MEAN, IMAGENET_STD, ImageSet, decode_images, normalize
from study.evaluate import reranking
from study.evaluate.checkpoint import model_from_checkpoint, num_classes_of
from study.evaluate.cli import main
from study.evaluate.features import evaluate, extract_features
from study.evaluate.metrics import pairwise_distance, rank_metrics
from study.evaluate.reranking import k_reciprocal_rerank
from study.models import build_model


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread():
    """Run this module's tiny convolutions on one thread.

    They gain nothing from more, and when other jobs share the CPU each OpenMP barrier can wait a
    scheduler time slice: a 10-image MobileNetV2 pass went from 0.2 s to 25 s on a busy 2-core machine.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ColumnWeighted(nn.Module):
    """Stand-in: a 1x1 conv, then plain and column-weighted pooling, so mirroring changes the feature."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.norm = nn.BatchNorm2d(4)
        self.modes_seen: list[bool] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.modes_seen.append(self.training)
        x = self.norm(self.conv(x))
        ramp = torch.linspace(0, 1, x.shape[-1], device=x.device)
        return torch.cat([x.mean(dim=(2, 3)), (x * ramp).mean(dim=(2, 3))], dim=1)


def random_images(n: int, seed: int = 0, height: int = 8, width: int = 6) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def standin() -> ColumnWeighted:
    torch.manual_seed(0)
    return ColumnWeighted()


def test_flip_adds_the_mirrored_image_feature_then_normalises():
    model, images = standin(), random_images(5)
    with torch.no_grad():
        x = normalize(images)
        model.eval()
        by_hand = model.features(x) + model.features(x.flip(-1))
        plain = model.features(x)
    torch.testing.assert_close(extract_features(model, images), by_hand / by_hand.norm(dim=1, keepdim=True))
    torch.testing.assert_close(
        extract_features(model, images, flip=False), plain / plain.norm(dim=1, keepdim=True)
    )
    # The stand-in is not mirror-invariant, so the flip term really changes the answer.
    assert not torch.allclose(extract_features(model, images), extract_features(model, images, flip=False))


def test_mirror_symmetric_images_get_the_same_feature_with_or_without_flip():
    model, images = standin(), random_images(4)
    symmetric = torch.cat([images, images.flip(-1)], dim=-1)
    torch.testing.assert_close(
        extract_features(model, symmetric), extract_features(model, symmetric, flip=False)
    )


def test_features_are_unit_float32_rows_and_independent_of_batch_size():
    model, images = standin(), random_images(7)
    features = extract_features(model, images, batch_size=3)
    assert features.dtype == torch.float32 and features.shape == (7, 8)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(7))
    torch.testing.assert_close(features, extract_features(model, images, batch_size=100))


def test_model_runs_in_eval_mode_and_every_module_mode_is_restored():
    model = standin()
    model.train()
    model.norm.eval()  # e.g. a frozen block kept in eval mode during training
    extract_features(model, random_images(3))
    assert model.modes_seen and not any(model.modes_seen)
    assert model.training and model.conv.training and not model.norm.training
    model.eval()
    extract_features(model, random_images(3))
    assert not model.training and not model.norm.training


def test_mode_is_restored_when_the_model_fails():
    class Broken(ColumnWeighted):
        def features(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(model, random_images(2))
    assert model.training and model.norm.training


def test_bf16_autocast_gives_float32_features_close_to_fp32():
    model, images = standin(), random_images(4)
    bf16 = extract_features(model, images, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, extract_features(model, images), atol=3e-2, rtol=0)


class Spatial(nn.Module):
    """Stand-in with a 3x3 convolution that records the memory format of the images it is given."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)
        self.inputs_channels_last: list[bool] = []

    def features(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs_channels_last.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.conv(x).mean(dim=(2, 3))


def test_a_channels_last_model_is_fed_channels_last_images_and_gives_its_nchw_features():
    model, images = Spatial(), random_images(4)
    nchw = extract_features(model, images)
    assert model.inputs_channels_last == [False, False]
    channels_last = extract_features(model.to(memory_format=torch.channels_last), images)
    assert model.inputs_channels_last[2:] == [True, True]
    torch.testing.assert_close(channels_last, nchw, atol=1e-5, rtol=1e-5)


class AngleTable(nn.Module):
    """Stand-in model: each image is a uniform grey code k and its feature is (cos a_k, sin a_k)."""

    def __init__(self, angles: list[float]):
        super().__init__()
        self.table = nn.Parameter(torch.tensor([[math.cos(a), math.sin(a)] for a in angles]))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        code = (x[:, 0, 0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255
        return self.table[code.round().long()]


def coded_set(codes: list[int], pids: list[int], camids: list[int]) -> ImageSet:
    images = torch.tensor(codes, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 2).contiguous()
    return ImageSet(images, torch.tensor(pids), torch.tensor(camids), [f"{c}.png" for c in codes])


def test_evaluate_on_a_hand_ranked_problem():
    # Gallery angles 0.1..0.5; query 0 (pid 1, camera 0) at angle 0, query 1 (pid 2) at 0.44,
    # query 2 (pid 3) has no gallery image and is skipped.
    gallery = coded_set([0, 1, 2, 3, 4, 5], pids=[1, 2, 1, -1, 0, 1], camids=[0, 1, 1, 1, 2, 2])
    query = coded_set([6, 7, 8], pids=[1, 2, 3], camids=[0, 0, 0])
    model = AngleTable([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.0, 0.44, 2.0])
    metrics = evaluate(model, query, gallery)
    # Query 0 after junk removal: g1 (non), g2 (match), g4 (distractor), g5 (match) -> AP 1/2, INP 2/4.
    # Query 1: g4, g5, g2, then its only match g1 at rank 4 -> AP 1/4, INP 1/4.
    assert metrics["mAP"] == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert metrics["mINP"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert (metrics["rank1"], metrics["rank5"], metrics["rank10"]) == (0.0, 1.0, 1.0)
    assert metrics["num_skipped_queries"] == 1
    assert all(type(metrics[k]) is float for k in ("mAP", "rank1", "rank5", "rank10", "mINP"))
    assert evaluate(model, query, gallery, distance="cosine")["mAP"] == pytest.approx(metrics["mAP"])


# ----------------------------------------------------------------------------- re-ranking


def clustered_problem(seed: int, identities: int = 30, per_identity: int = 8, dim: int = 32):
    """Identities seen from two viewpoints (sub-centres), one query per identity, the rest gallery."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(identities, dim, generator=gen)
    views = centres[:, None] + 0.8 * torch.randn(identities, 2, dim, generator=gen)
    pids = torch.arange(1, identities + 1).repeat_interleave(per_identity)
    view = torch.randint(0, 2, (len(pids),), generator=gen)
    features = views[pids - 1, view] + 0.9 * torch.randn(len(pids), dim, generator=gen)
    cams = torch.randint(0, 4, (len(pids),), generator=gen)
    is_query = torch.arange(len(pids)) % per_identity == 0
    q, g = features[is_query], features[~is_query]
    dists = [pairwise_distance(a, b).double().numpy() for a, b in ((q, g), (q, q), (g, g))]
    return dists, (pids[is_query], pids[~is_query], cams[is_query], cams[~is_query])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rerank_improves_map_on_clustered_identities(seed):
    (q_g, q_q, g_g), ids = clustered_problem(seed)
    before = rank_metrics(q_g, *ids)
    after = rank_metrics(k_reciprocal_rerank(q_g, q_q, g_g), *ids)
    assert after["mAP"] > before["mAP"] + 0.05
    assert after["cmc"][0] >= before["cmc"][0]


def test_rerank_shape_range_and_lambda_one_is_the_normalised_original():
    (q_g, q_q, g_g), _ = clustered_problem(0)
    out = k_reciprocal_rerank(q_g, q_q, g_g)
    assert out.shape == q_g.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 + 1e-6
    original = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
    row_max = np.maximum(q_q.max(1), q_g.max(1))[:, None]
    np.testing.assert_allclose(original, q_g / row_max, rtol=1e-6)


def test_rerank_jaccard_part_is_symmetric_in_query_and_gallery():
    # With lambda 0 only the Jaccard distance is left, and it does not care which side is the query.
    (q_g, q_q, g_g), _ = clustered_problem(1)
    forward = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=0.0)
    backward = k_reciprocal_rerank(q_g.T, g_g, q_q, lambda_value=0.0)
    np.testing.assert_allclose(forward, backward.T, atol=1e-6)
    assert forward.max() <= 1 and forward.min() >= 0


def test_rerank_follows_a_gallery_permutation():
    (q_g, q_q, g_g), _ = clustered_problem(2)
    perm = np.random.default_rng(0).permutation(q_g.shape[1])
    permuted = k_reciprocal_rerank(q_g[:, perm], q_q, g_g[np.ix_(perm, perm)])
    np.testing.assert_allclose(permuted, k_reciprocal_rerank(q_g, q_q, g_g)[:, perm], atol=1e-6)


def test_rerank_row_chunks_do_not_change_the_result(monkeypatch):
    (q_g, q_q, g_g), _ = clustered_problem(0)
    whole = k_reciprocal_rerank(q_g, q_q, g_g)
    monkeypatch.setattr(reranking, "_ROW_CHUNK", 7)  # chunks that straddle the query/gallery boundary
    np.testing.assert_array_equal(k_reciprocal_rerank(q_g, q_q, g_g), whole)


def test_rerank_handles_sets_smaller_than_k1_and_rejects_bad_arguments():
    (q_g, q_q, g_g), _ = clustered_problem(0, identities=2, per_identity=3)
    out = k_reciprocal_rerank(q_g, q_q, g_g, k1=20, k2=6)
    assert out.shape == (2, 4) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="k1 and k2 must be >= 1"):
        k_reciprocal_rerank(q_g, q_q, g_g, k1=0)
    with pytest.raises(ValueError, match=r"lambda_value must be in \[0, 1\], got 1.5"):
        k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.5)
    with pytest.raises(ValueError, match="expected q_g"):
        k_reciprocal_rerank(q_g, g_g, q_q)


# ----------------------------------------------------------------------------- CLI on a tiny checkpoint

HEIGHT, WIDTH = 64, 32


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A Market-layout data set of a few coloured images and an untrained MobileNetV2 checkpoint."""
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "market"
    rng = np.random.default_rng(0)
    names = {
        "bounding_box_train": ["0001_c1_0", "0001_c2_0", "0004_c1_0"],
        "query": ["0002_c1_0", "0003_c1_0", "0005_c2_0"],
        "bounding_box_test": [
            "0002_c2_0",
            "0002_c1_1",
            "0003_c2_0",
            "0003_c3_0",
            "0000_c1_0",
            "-1_c1_0",
            "0005_c1_0",
        ],
    }
    for folder, stems in names.items():
        (data / folder).mkdir(parents=True)
        for stem in stems:
            pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / folder / f"{stem}.png")
    config = config_from_dict(
        {
            "model": {"backbone": "mobilenet_v2", "weights": "none"},
            "data": {"height": HEIGHT, "width": WIDTH},
            "train": {"eval_batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=7)
    checkpoint = root / "epoch-0001.pt"
    torch.save({"config": config.to_dict(), "model": model.state_dict(), "epoch": 1}, checkpoint)
    return {"data": data, "checkpoint": checkpoint, "root": root, "config": config, "model": model}


def image_set(folder) -> ImageSet:
    paths = sorted(str(p) for p in folder.iterdir())
    pids = [int(p.rsplit("/", 1)[1].split("_")[0]) for p in paths]
    camids = [int(p.rsplit("_c", 1)[1].split("_")[0]) for p in paths]
    return ImageSet(decode_images(paths, HEIGHT, WIDTH), torch.tensor(pids), torch.tensor(camids), paths)


def printed_numbers(text: str) -> dict[str, float]:
    words = text.split()
    return {
        label: float(words[words.index(label) + 1])
        for label in ("mAP", "rank-1", "rank-5", "rank-10", "mINP")
    }


def test_cli_prints_the_metrics_of_evaluate(tiny_run, capsys):
    main([str(tiny_run["checkpoint"]), "--data", str(tiny_run["data"]), "--device", "cpu"])
    out = capsys.readouterr().out
    expected = evaluate(
        tiny_run["model"],
        image_set(tiny_run["data"] / "query"),
        image_set(tiny_run["data"] / "bounding_box_test"),
    )
    got = printed_numbers(out)
    assert got["mAP"] == pytest.approx(100 * expected["mAP"], abs=0.006)
    assert got["rank-1"] == pytest.approx(100 * expected["rank1"], abs=0.006)
    assert got["mINP"] == pytest.approx(100 * expected["mINP"], abs=0.006)
    assert "3 query, 7 gallery images" in out
    assert out.startswith("decoding 3 query and 7 gallery images at ")  # said before the slow part


def test_cli_rerank_and_ranked_list_picture(tiny_run, capsys):
    picture = tiny_run["root"] / "ranks.png"
    args = [
        str(tiny_run["checkpoint"]),
        "--data",
        str(tiny_run["data"]),
        "--device",
        "cpu",
        "--batch-size",
        "2",
    ]
    main([*args, "--rerank", "--show", "0,2", "--show-out", str(picture)])
    out = capsys.readouterr().out
    assert "re-ranked" in out and str(picture) in out
    with Image.open(picture) as image:
        # Two rows of the query, its junk (2 and 1) and all counted gallery images (5 and 6): 8 cells each.
        cell_w, cell_h = WIDTH + 6 + 4, HEIGHT + 6 + 14 + 4
        assert image.size == (8 * cell_w, 2 * cell_h)
        rgb = image.convert("RGB")
        assert rgb.getpixel((2, 2)) == (0, 0, 0)  # the query's border
        border_colours = {rgb.getpixel((c * cell_w + 2, 2)) for c in range(1, 8)}
        assert border_colours <= {(50, 205, 50), (255, 0, 0), (128, 128, 128)}
        assert (128, 128, 128) in border_colours  # query 0's same-camera match is drawn as junk


def test_checkpoint_rebuilds_the_trained_model(tiny_run):
    state = tiny_run["model"].state_dict()
    assert num_classes_of(state) == 7
    rebuilt = model_from_checkpoint(tiny_run["config"], state)
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing.pt", "does not exist"),
        (lambda root: write(root / "garbage.pt", b"not a checkpoint"), "is not a training checkpoint (torch"),
        (lambda root: write(root / "config.yaml", b"a: 1\n"), "(torch.load fails: IndexError); pass a"),
        (lambda root: save(root / "list.pt", [1, 2]), "is not a training checkpoint"),
    ],
)
def test_cli_bad_checkpoint_is_a_one_line_error(tiny_run, capsys, make, message):
    path = make(tiny_run["root"])
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), "--data", str(tiny_run["data"])])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert "weights_only" not in err and "pop from empty list" not in err


def test_cli_evaluates_the_synthetic_data_set_of_the_checkpoints_config(tiny_run, tmp_path, capsys):
    config = tiny_run["config"].to_dict()
    synthetic = {"identities": 4, "cameras": 2, "seed": 0}
    config["data"] |= {"root": "synthetic", "synthetic_dir": str(tmp_path), "synthetic": synthetic}
    path = save(tmp_path / "synthetic.pt", {"config": config, "model": tiny_run["model"].state_dict()})
    main([str(path), "--data", "synthetic", "--device", "cpu"])
    assert "ids4-cams2-seed0 (market): 4 query, 14 gallery images" in capsys.readouterr().out
    assert (tmp_path / "ids4-cams2-seed0" / "query").is_dir()  # generated where training would


def test_cli_rejects_out_of_range_show_and_mismatched_weights(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_run["checkpoint"]), "--data", str(tiny_run["data"]), "--show", "0,3"])
    assert exit_info.value.code == 2
    assert "--show indices must be in 0..2" in capsys.readouterr().err
    config = tiny_run["config"].to_dict()
    config["model"]["backbone"] = "resnet18"
    path = save(tiny_run["root"] / "mismatch.pt", {"config": config, "model": tiny_run["model"].state_dict()})
    with pytest.raises(SystemExit):
        main([str(path), "--data", str(tiny_run["data"])])
    assert "do not fit the resnet18 model" in capsys.readouterr().err


def write(path, data: bytes):
    path.write_bytes(data)
    return path


def save(path, obj):
    torch.save(obj, path)
    return path
