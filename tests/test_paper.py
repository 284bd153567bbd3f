"""The paper setting end to end at tiny scale: data_prep split -> ViT-B/16 (random init) -> the demo's story."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.demo import DemoConfig, run_demo
from ci_toolkit.errors import CIError, DataError
from ci_toolkit.data import load_split_task

REPO = Path(__file__).resolve().parents[1]
NAMES = ["AnnualCrop", "Forest", "Highway", "Pasture", "River", "SeaLake"]


def _images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i:03d}.jpg")


@pytest.fixture(scope="module")
def eurosat_like(tmp_path_factory):
    """A EuroSAT-shaped folder prepared by the real data_prep script, plus an OOD folder."""
    root = tmp_path_factory.mktemp("eurosat")
    for k, name in enumerate(NAMES):
        _images(root / "2750" / name, 6, seed=k)
    subprocess.run([sys.executable, str(REPO / "data_prep" / "eurosat" / "prepare.py"), "--root", str(root)],
                   check=True, capture_output=True)
    ood = tmp_path_factory.mktemp("ood")
    _images(ood, 20, seed=99)
    return root, ood


def test_split_becomes_a_base_new_task(eurosat_like):
    root, _ = eurosat_like
    task = load_split_task(root, image_size=32, shots=2, seed=1)
    assert task.classnames[:2] == ["Annual Crop Land", "Forest"]  # CoOp's descriptive names, label order
    assert task.seen == [0, 1, 2] and task.unseen == [3, 4, 5]  # base-to-new: the first ceil(n/2) are base
    assert task.train_x.shape == (6, 3, 32, 32) and task.train_x.dtype == torch.uint8
    assert set(task.train_y.tolist()) == {0, 1, 2}  # few-shot training on base classes only
    x, y = task.split("test", "unseen")
    assert len(x) == 6 and set(y.tolist()) == {0, 1, 2}  # 2 test images per class, re-indexed


@pytest.mark.filterwarnings("ignore:profile 'paper' asks for device")
def test_paper_profile_end_to_end_with_random_init_vit_b16(eurosat_like, tmp_path):
    root, ood = eurosat_like
    # no gate probe: on ViT-B/16 it is 2 x 32 meta-net units of pixel optimisation, minutes of CPU; the probe is
    # tested on MiniCLIP (tests/test_scan.py)
    scan = ci.ScanConfig(inversion=ci.InversionConfig(batch_size=4), pool_size=8, heldout_size=2, probe_eps=None)
    res = run_demo(tmp_path, DemoConfig("paper", data=root, ood=ood), progress=False, pretrained=None, device="cpu",
                   shots=1, n_test_per_class=1, epochs=1, batch_size=4, scan_config=scan)
    cfg = res["config"]
    assert cfg["profile"]["backbone"] == "ViT-B-16-quickgelu" and cfg["data"] == str(root)
    assert json.loads((tmp_path / "clean_model" / "model.json").read_text())["backbone"]["name"] == "ViT-B-16-quickgelu"
    report = json.loads((tmp_path / "scan_backdoored" / "report.json").read_text())
    assert [c["name"] for c in report["classes"]] == ["Annual Crop Land", "Forest", "Highway or Road"]
    assert report["config"]["pool_size"] == 8 and report["config"]["heldout_size"] == 2
    assert res["backdoored"]["true_target"] == "Forest"
    assert 0 <= res["repair"]["asr_after"] <= 1 and (tmp_path / "repaired_model").is_dir()


def test_paper_profile_needs_data(tmp_path):
    with pytest.warns(UserWarning, match="runs on the CPU"), pytest.raises(CIError, match="--data"):
        run_demo(tmp_path, DemoConfig("paper"), progress=False, pretrained=None)
    with pytest.warns(UserWarning), pytest.raises(DataError, match="split_zhou"):
        run_demo(tmp_path, DemoConfig("paper", data=tmp_path, ood=tmp_path), progress=False, pretrained=None)
