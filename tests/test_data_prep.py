"""data_prep scripts on small fixture folders (issue 3 part 5): CoOp split format, few-shot, OOD pool."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import ci_toolkit as ci
from ci_toolkit.data import base_new_split, build_ood_pool, generate_fewshot, load_split, overlaps

REPO = Path(__file__).resolve().parents[1]


def _img(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (10, 200, 30)).save(path)


def _run(script, *args):
    out = subprocess.run([sys.executable, str(REPO / "data_prep" / script / "prepare.py"), *args],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_caltech101_split_has_coop_format_renames_and_fewshot(tmp_path):
    cats = tmp_path / "101_ObjectCategories"
    for cls in ("airplanes", "Faces", "BACKGROUND_Google", "Faces_easy", "yin_yang"):
        for i in range(10):
            _img(cats / cls / f"image_{i:04d}.jpg")
    _run("caltech101", "--root", str(tmp_path))
    split = load_split(tmp_path / "split_zhou_Caltech101.json")
    names = sorted({(lab, name) for _, lab, name in split["train"]})
    assert names == [(0, "face"), (1, "airplane"), (2, "yin yang")]  # sorted folders, CoOp renames
    assert [len(split[p]) for p in ("train", "val", "test")] == [15, 6, 9]  # 50/20/30 per class
    rel, lab, _ = split["test"][0]
    assert (cats / rel).is_file() and isinstance(lab, int)
    all_files = [i[0] for p in split.values() for i in p]
    assert len(all_files) == len(set(all_files)) == 30  # disjoint parts, nothing ignored leaks in
    few = json.loads((tmp_path / "split_fewshot" / "shot_4-seed_1.json").read_text())
    assert len(few["train"]) == 12 and {i[1] for i in few["train"]} == {0, 1, 2}
    # seeded: the same command gives the same split
    first = (tmp_path / "split_zhou_Caltech101.json").read_text()
    _run("caltech101", "--root", str(tmp_path))
    assert (tmp_path / "split_zhou_Caltech101.json").read_text() == first


def test_oxford_pets_split_from_annotation_lists(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    trainval = [f"Abyssinian_{i} 1 1 1" for i in range(10)] + [f"great_pyrenees_{i} 2 2 1" for i in range(10)]
    ann.joinpath("trainval.txt").write_text("\n".join(trainval))
    ann.joinpath("test.txt").write_text("Abyssinian_99 1 1 1\ngreat_pyrenees_99 2 2 1\n")
    _run("oxford_pets", "--root", str(tmp_path))
    split = load_split(tmp_path / "split_zhou_OxfordPets.json")
    assert split["test"] == [["Abyssinian_99.jpg", 0, "abyssinian"], ["great_pyrenees_99.jpg", 1, "great pyrenees"]]
    assert len(split["train"]) == 16 and len(split["val"]) == 4


def test_sun397_and_ucf101_class_names(tmp_path):
    (tmp_path / "ClassName.txt").write_text("/a/abbey\n/b/bakery/shop\n")
    (tmp_path / "Training_01.txt").write_text("\n".join([f"/a/abbey/sun_{i}.jpg" for i in range(5)] +
                                                       [f"/b/bakery/shop/sun_{i}.jpg" for i in range(5)]))
    (tmp_path / "Testing_01.txt").write_text("/a/abbey/sun_9.jpg\n/b/bakery/shop/sun_9.jpg\n")
    _run("sun397", "--root", str(tmp_path))
    split = load_split(tmp_path / "split_zhou_SUN397.json")
    assert split["test"] == [["a/abbey/sun_9.jpg", 0, "abbey"], ["b/bakery/shop/sun_9.jpg", 1, "shop bakery"]]
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    lists.joinpath("classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    lists.joinpath("trainlist01.txt").write_text("\n".join(f"{a}/v_{a}_g{i:02d}.avi {j}" for j, a in ((1, "ApplyEyeMakeup"), (2, "YoYo")) for i in range(5)))
    lists.joinpath("testlist01.txt").write_text("YoYo/v_YoYo_g99.avi\n")
    _run("ucf101", "--root", str(tmp_path))
    split = load_split(tmp_path / "split_zhou_UCF101.json")
    assert split["test"] == [["YoYo/v_YoYo_g99.jpg", 1, "Yo Yo"]]
    assert {i[2] for i in split["train"] + split["val"]} == {"Apply Eye Makeup", "Yo Yo"}


def test_fewshot_and_base_new_helpers():
    items = [[f"{c}_{i}.jpg", c, str(c)] for c in range(3) for i in range(5)]
    a, b = generate_fewshot(items, 2, seed=1), generate_fewshot(items, 2, seed=1)
    assert a == b and len(a) == 6 and generate_fewshot(items, 2, seed=2) != a
    assert len(generate_fewshot(items, 16, seed=1)) == 15  # fewer than K: all of them
    assert base_new_split(list("abcde")) == ([0, 1, 2], [3, 4])


def test_ood_pool_excludes_overlapping_labels_and_never_overwrites(tmp_path):
    src = tmp_path / "openimages"
    for cls, n in (("Cat", 6), ("Tabby_cats", 4), ("Skyscraper", 5), ("Bicycle_wheel", 5)):
        for i in range(n):
            _img(src / cls / f"{cls}_{i}.jpg")
    cands = ["cat", "truck", "wheel"]
    with pytest.raises(ci.DataError, match="only 5 class-disjoint"):
        build_ood_pool(src, tmp_path / "too_many", 8, cands)
    info = build_ood_pool(src, tmp_path / "pool", 4, cands, seed=0)
    assert info["excluded"] == 15  # Cat, Tabby cats (plural) and Bicycle wheel all overlap
    assert len(info["files"]) == 4 and all(f.startswith("Skyscraper/") for f in info["files"])
    assert len(list((tmp_path / "pool").glob("*.jpg"))) == 4
    assert json.loads((tmp_path / "pool" / "pool.json").read_text())["candidates"] == cands
    assert overlaps("Tabby cats", ["cat"]) and not overlaps("Skyscraper", ["cat", "truck"])
    with pytest.raises(ci.DataError, match="not empty"):
        build_ood_pool(src, tmp_path / "pool", 2, cands)
    # a labels CSV (Open Images style) overrides folder names
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(f"Cat/Cat_{i}.jpg,Building;Tower" for i in range(6)))
    info = build_ood_pool(src, tmp_path / "pool2", 11, cands, labels_csv=csv, seed=0)
    assert info["excluded"] == 9 and sum(f.startswith("Cat/") for f in info["files"]) == 6
