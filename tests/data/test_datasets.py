from __future__ import annotations

from pathlib import Path

import pytest

from study.data import FORMATS, Sample, read_dataset
from study.data.datasets import check_query_gallery, detect_format
from study.errors import UserError


def triples(samples: list[Sample]) -> list[tuple[str, int, int]]:
    return [(Path(s.path).name, s.pid, s.camid) for s in samples]


def test_formats_are_the_documented_ones():
    assert FORMATS == ("market1501", "dukemtmc", "cuhk03", "msmt17", "market", "manifest")


def test_market1501_drops_junk_from_training_but_keeps_it_for_evaluation(market_tree):
    root = market_tree(
        {
            "train": ["0002_c1s1_000451_03.jpg", "-1_c1s1_000401_03.jpg", "0007_c6s4_002202_01.jpg"],
            "query": ["0003_c2s1_000001_00.jpg"],
            "gallery": ["-1_c3s1_000551_02.jpg", "0000_c1s1_000151_01.jpg", "0003_c5s3_065037_02.jpg"],
        }
    )
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    (root / "bounding_box_train" / "._0002_c1s1_000451_03.jpg").write_bytes(b"macOS metadata")
    data = read_dataset(root, "market1501")
    assert data.name == "market1501"
    assert triples(data.train) == [("0002_c1s1_000451_03.jpg", 2, 1), ("0007_c6s4_002202_01.jpg", 7, 6)]
    assert triples(data.query) == [("0003_c2s1_000001_00.jpg", 3, 2)]
    assert sorted(s.pid for s in data.gallery) == [-1, 0, 3]
    assert all(Path(s.path).is_file() for s in data.train + data.query + data.gallery)
    assert detect_format(root) == "market1501"


def test_dukemtmc(market_tree):
    root = market_tree(
        {
            "train": ["0005_c2_f0046985.jpg", "0005_c5_f0051781.jpg"],
            "query": ["0033_c1_f0057706.jpg"],
            "gallery": ["0033_c6_f0045755.jpg"],
        }
    )
    data = read_dataset(root, "dukemtmc")
    assert triples(data.train) == [("0005_c2_f0046985.jpg", 5, 2), ("0005_c5_f0051781.jpg", 5, 5)]
    assert triples(data.gallery) == [("0033_c6_f0045755.jpg", 33, 6)]
    assert read_dataset(root).name == "dukemtmc"


def test_cuhk03_reads_its_folder_or_labeled_from_the_np_root(tmp_path, market_tree):
    names = {
        "train": ["0001_c1_1.png", "0001_c2_6.png"],
        "query": ["0002_c1_1.png"],
        "gallery": ["0002_c2_7.png"],
    }
    labeled = market_tree(names, tmp_path / "cuhk03-np" / "labeled")
    market_tree({**names, "train": ["0009_c1_1.png"]}, tmp_path / "cuhk03-np" / "detected")
    direct = read_dataset(labeled, "cuhk03")
    via_root = read_dataset(tmp_path / "cuhk03-np", "cuhk03")
    assert (
        triples(direct.train) == triples(via_root.train) == [("0001_c1_1.png", 1, 1), ("0001_c2_6.png", 1, 2)]
    )
    assert read_dataset(tmp_path / "cuhk03-np").name == "cuhk03"
    assert triples(read_dataset(tmp_path / "cuhk03-np" / "detected", "cuhk03").train) == [
        ("0009_c1_1.png", 9, 1)
    ]


def test_msmt17_reads_list_files_with_camera_from_the_name(tmp_path, jpeg):
    files = {
        "train": ["0000/0000_000_01_0303morning_0015_0.jpg", "0001/0001_004_14_0303noon_0220_1.jpg"],
        "test": ["0000/0000_000_05_0303morning_0016_0.jpg", "0000/0000_001_07_0303noon_0017_0.jpg"],
    }
    for folder, names in files.items():
        for name in names:
            jpeg(tmp_path / folder / name)
    (tmp_path / "list_train.txt").write_text(f"{files['train'][0]} 0\n")
    (tmp_path / "list_val.txt").write_text(f"{files['train'][1]} 1\n\n")
    (tmp_path / "list_query.txt").write_text(f"{files['test'][0]} 0\n")
    (tmp_path / "list_gallery.txt").write_text(f"{files['test'][1]} 0\n")
    data = read_dataset(tmp_path)
    assert data.name == "msmt17"
    assert [(s.pid, s.camid) for s in data.train] == [(0, 1), (1, 14)]
    assert [(s.pid, s.camid) for s in data.query + data.gallery] == [(0, 5), (0, 7)]
    assert data.gallery[0].path == str(tmp_path / "test" / files["test"][1])


def test_msmt17_errors(tmp_path):
    (tmp_path / "list_train.txt").write_text("a.jpg 0\n")
    with pytest.raises(UserError, match=r"list_val\.txt, list_query\.txt, list_gallery\.txt missing"):
        read_dataset(tmp_path, "msmt17")
    for name in ("list_val.txt", "list_query.txt", "list_gallery.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match=r"list_train.txt:1: cannot parse 'a.jpg 0'"):
        read_dataset(tmp_path, "msmt17")


def test_generic_market_ignores_the_rest_of_the_name(market_tree):
    root = market_tree(
        {
            "train": ["0012_c3_whatever-here.jpg", "0012_c14.png"],
            "query": ["0001_c1_x.jpg"],
            "gallery": ["0001_c2.jpg"],
        }
    )
    data = read_dataset(root)
    assert data.name == "market"
    assert triples(data.train) == [("0012_c14.png", 12, 14), ("0012_c3_whatever-here.jpg", 12, 3)]


def test_manifest_paths_are_relative_to_the_csv_or_absolute(tmp_path, jpeg):
    a, c = jpeg(tmp_path / "images" / "a.jpg"), jpeg(tmp_path / "images" / "c.jpg")
    b, d = jpeg(tmp_path / "elsewhere" / "b.jpg"), jpeg(tmp_path / "elsewhere" / "d.jpg")
    manifest = tmp_path / "set.csv"
    manifest.write_text(
        f"path,pid,camid,split\nimages/a.jpg,7,1,train\n{b},7,2,train\n{d},8,1,query\nimages/c.jpg,8,2,gallery\n"
    )
    data = read_dataset(manifest)
    assert data.name == "manifest"
    assert [(s.path, s.pid, s.camid) for s in data.train] == [(str(a), 7, 1), (str(b), 7, 2)]
    assert [(s.path, s.pid, s.camid) for s in data.query + data.gallery] == [(str(d), 8, 1), (str(c), 8, 2)]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("file,pid\nx.jpg,1\n", "needs a header with columns path,pid,camid,split"),
        (
            "path,pid,camid,split\nx.jpg,1,1,tran\n",
            r"set.csv:2: unknown split 'tran' \(did you mean 'train'\?\)",
        ),
        ("path,pid,camid,split\nx.jpg,one,1,train\n", "set.csv:2: pid and camid must be integers"),
        ("path,pid,camid,split\nx.jpg,1\n", "set.csv:2: every row needs path,pid,camid,split"),
    ],
)
def test_manifest_errors(tmp_path, body, message):
    (tmp_path / "set.csv").write_text(body)
    with pytest.raises(UserError, match=message):
        read_dataset(tmp_path / "set.csv")


def test_missing_root(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_dataset(tmp_path / "nowhere")


def test_wrong_layout_says_what_was_expected_and_found(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "query").mkdir()
    with pytest.raises(UserError) as error:
        read_dataset(tmp_path)
    message = str(error.value)
    assert "expected folders bounding_box_train/, query/, bounding_box_test/" in message
    assert "bounding_box_train, bounding_box_test missing" in message
    assert "found images/, query/" in message
    assert "\n" not in message


def test_empty_split(market_tree, simple_names):
    root = market_tree({**simple_names, "query": []})
    with pytest.raises(UserError, match=r"the query split of .* has no images"):
        read_dataset(root)


def test_training_split_of_junk_only_is_empty(market_tree, simple_names):
    root = market_tree({**simple_names, "train": ["-1_c1_01.jpg"]})
    with pytest.raises(UserError, match="the train split"):
        read_dataset(root)


def test_unparsable_file_name_is_named(market_tree, simple_names):
    root = market_tree({**simple_names, "gallery": [*simple_names["gallery"], "holiday.jpg"]})
    with pytest.raises(UserError, match=r"cannot parse identity and camera from file name '.*holiday.jpg'"):
        read_dataset(root)


def test_strict_format_rejects_other_names(market_tree, simple_names):
    root = market_tree(simple_names)
    with pytest.raises(UserError, match=r"format market1501 expects names like 0002_c1s1_000451_03\.jpg"):
        read_dataset(root, "market1501")


def test_unknown_format_suggests_the_closest(market_tree, simple_names):
    with pytest.raises(
        UserError, match=r"unknown data set format 'market1051' \(did you mean 'market1501'\?\)"
    ):
        read_dataset(market_tree(simple_names), "market1051")


def test_query_identity_without_gallery_image_is_named():
    query = [Sample("q1.jpg", 4, 1), Sample("q2.jpg", 9, 1)]
    gallery = [Sample("g1.jpg", 4, 2)]
    with pytest.raises(UserError, match=r"query identity 9 \(e.g. q2.jpg\) has no gallery image"):
        check_query_gallery(query, gallery)
    check_query_gallery(query[:1], gallery)


def test_no_example_run_as_a_test_reads_a_data_set_beside_the_clone():
    # The README's test command must pass in a clone with nothing beside it (no ../shared/data).
    root = Path(__file__).resolve().parents[2]
    examples = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("study", "schedules", "tests")
        for path in (root / folder).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith((">>>", "... ")) and "../" in line
    ]
    assert examples == []
