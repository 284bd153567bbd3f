"""Image-folder loaders (issue 3 part 4): layouts, conversions, broken files, real CIFAR-10 images."""

from pathlib import Path

import pytest
import torch
from PIL import Image

import ci_toolkit as ci
from ci_toolkit.data import load_image_folder

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-test"


def _img(path, mode="RGB", size=(20, 16), colour=(200, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "CMYK":
        Image.new("CMYK", size, (0, 200, 200, 0)).save(path.with_suffix(".jpg"))
        return
    c = colour if mode in ("RGB",) else (colour + (128,) if mode == "RGBA" else colour[0])
    Image.new(mode, size, c).save(path)


def test_class_subfolders_become_a_labelled_set(tmp_path):
    _img(tmp_path / "red_circle" / "a.png")
    _img(tmp_path / "red_circle" / "b.png")
    _img(tmp_path / "blue" / "c.png", colour=(0, 0, 255))
    s = load_image_folder(tmp_path, image_size=12, progress=False)
    assert s.classnames == ["blue", "red circle"]
    assert s.images.shape == (3, 3, 12, 12) and s.images.dtype == torch.uint8
    assert s.labels.tolist() == [0, 1, 1]
    assert s.images[0, 2].float().mean() > 200  # blue stays blue


def test_flat_folder_is_an_unlabeled_pool_with_conversions(tmp_path):
    _img(tmp_path / "rgb.png")
    _img(tmp_path / "gray.png", mode="L")
    _img(tmp_path / "rgba.png", mode="RGBA")
    _img(tmp_path / "cmyk", mode="CMYK")
    _img(tmp_path / "pal.gif", mode="P")
    s = load_image_folder(tmp_path, image_size=10, progress=False)
    assert s.labels is None and len(s) == 5 and s.images.shape[1:] == (3, 10, 10)
    assert s.skipped == []


def test_class_folders_read_as_an_unlabeled_pool(tmp_path):
    _img(tmp_path / "red" / "a.png")
    _img(tmp_path / "blue" / "b.png", colour=(0, 0, 255))
    _img(tmp_path / "blue" / "c.png", colour=(0, 0, 255))
    s = load_image_folder(tmp_path, image_size=8, labelled=False, progress=False)
    assert s.labels is None and s.classnames is None
    assert s.files == ["blue/b.png", "blue/c.png", "red/a.png"]
    # loose images beside class folders: the layout reads as a pool, and the pool holds all of them
    _img(tmp_path / "loose.png")
    mixed = load_image_folder(tmp_path, image_size=8, progress=False)
    assert mixed.labels is None and mixed.files == ["loose.png", "blue/b.png", "blue/c.png", "red/a.png"]


def test_broken_files_are_reported_by_name(tmp_path):
    _img(tmp_path / "ok.png")
    _img(tmp_path / "tiny.png", size=(3, 3))
    good = tmp_path / "ok.png"
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    with pytest.warns(UserWarning, match="skipped 3"):
        s = load_image_folder(tmp_path, image_size=8, progress=False)
    assert s.files == ["ok.png"]
    reasons = dict(s.skipped)
    assert set(reasons) == {"tiny.png", "truncated.png", "garbage.jpg"}
    assert "too small" in reasons["tiny.png"]
    with pytest.raises(ci.DataError, match="garbage.jpg"):
        load_image_folder(tmp_path, image_size=8, strict=True, progress=False)


def test_empty_missing_and_unreadable_folders(tmp_path):
    with pytest.raises(ci.DataError, match="not found"):
        load_image_folder(tmp_path / "nope", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ci.DataError, match="no images found"):
        load_image_folder(tmp_path / "empty", image_size=8, progress=False)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.raises(ci.DataError, match="could be read"), pytest.warns(UserWarning):
        load_image_folder(tmp_path / "bad", image_size=8, progress=False)
    _img(tmp_path / "lab" / "cat" / "a.png")
    with pytest.raises(ci.DataError, match="without a subfolder"):
        load_image_folder(tmp_path / "lab", image_size=8, classnames=["cat", "dog"], progress=False)


def test_seeded_subsampling_is_reproducible(tmp_path):
    for i in range(12):
        _img(tmp_path / f"{i:02d}.png", colour=(i * 20, 0, 0))
    a = load_image_folder(tmp_path, image_size=8, limit=5, seed=3, progress=False)
    b = load_image_folder(tmp_path, image_size=8, limit=5, seed=3, progress=False)
    c = load_image_folder(tmp_path, image_size=8, limit=5, seed=4, progress=False)
    assert a.files == b.files and len(a) == 5 and a.files != c.files


@pytest.mark.skipif(not CIFAR.is_dir(), reason=f"real CIFAR-10 test images not present at {CIFAR}")
def test_real_cifar10_folder():
    s = load_image_folder(CIFAR, image_size=48, per_class=5, seed=0, progress=False)
    assert s.classnames[:3] == ["airplane", "automobile", "bird"] and len(s.classnames) == 10
    assert s.images.shape == (50, 3, 48, 48) and s.skipped == []
    assert s.labels.bincount().tolist() == [5] * 10
    pool = load_image_folder(CIFAR / "cat", image_size=32, labelled=False, limit=20, progress=False)
    assert pool.labels is None and len(pool) == 20 and 40 < pool.images.float().mean() < 220
