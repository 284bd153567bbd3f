"""The command line: help for everything, clear one-line errors, inspect on a real model folder."""

import json
import subprocess
import sys

import pytest
import torch

import ci_toolkit as ci
from ci_toolkit.cli import build_parser, main

COMMANDS = ["demo", "train", "implant", "scan", "repair", "calibrate", "course", "info", "inspect", "import-dassl",
            "pretrain-miniclip", "implant-encoder", "scan-encoder", "scan-text", "decomp"]


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "ci_toolkit", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_each_command_prints_its_own_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd.split(), "--help"])
    assert exc.value.code == 0
    assert "usage: ci-toolkit " + cmd in capsys.readouterr().out


def test_labelled_images_are_data_in_every_command():
    # repair and calibrate take labelled images as --data; scan-encoder too (its older --labelled still works)
    p = build_parser()
    for flag in ("--data", "--labelled"):
        args = p.parse_args(["scan-encoder", "ENC", "--out", "o", "--method", "invertune", flag, "imgs"])
        assert args.labelled == "imgs"
    assert p.parse_args(["repair", "M", "--report", "S", "--out", "o", "--data", "imgs"]).data == "imgs"


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ci-toolkit: error:") and "not found" in err and "\n" not in err


def test_inspect_a_saved_model(tiny_model, tmp_path, capsys):
    ci.save_model(tiny_model, tmp_path / "m")
    assert main(["inspect", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert '"classes": 4' in out and '"n_ctx": 4' in out


def _ood_folder(path, n):
    from PIL import Image

    path.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(40, 40, 3, generator=g) * 255).byte().numpy()
        Image.fromarray(arr).save(path / f"{i:03d}.png")
    return path


def test_scan_command_writes_a_report(tiny_model, tmp_path, capsys):
    import json

    ci.save_model(tiny_model, tmp_path / "m")
    ood = _ood_folder(tmp_path / "ood", 60)
    assert main(["scan", str(tmp_path / "m"), "--ood", str(ood), "--out", str(tmp_path / "scan")]) == 0
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["verdict"] in ("clean", "backdoored") and len(report["classes"]) == 4
    assert report["config"]["pool_size"] == 48 and report["config"]["heldout_size"] == 12
    assert "report.json" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty_ood", "tiny_ood", "corrupt_model", "missing_candidates"])
def test_scan_mistakes_exit_2_with_one_line(tiny_model, tmp_path, capsys, case):
    ci.save_model(tiny_model, tmp_path / "m")
    args = ["scan", str(tmp_path / "m"), "--out", str(tmp_path / "scan")]
    if case == "empty_ood":
        (tmp_path / "ood").mkdir()
        args += ["--ood", str(tmp_path / "ood")]
    elif case == "tiny_ood":
        args += ["--ood", str(_ood_folder(tmp_path / "ood", 10))]
    elif case == "corrupt_model":
        (tmp_path / "m" / "prompt_learner.safetensors").write_bytes(b"not a tensor file")
        args += ["--ood", str(_ood_folder(tmp_path / "ood", 60))]
    else:
        (tmp_path / "c.txt").write_text("red circle\ncat\ndog\n")
        args += ["--ood", str(_ood_folder(tmp_path / "ood", 60)), "--candidates", str(tmp_path / "c.txt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after any progress bar
    assert err.startswith("ci-toolkit: error:") and "\n" not in err
    assert {"empty_ood": "no images", "tiny_ood": "need at least 32", "corrupt_model": "safetensors",
            "missing_candidates": "missing from the candidate list"}[case] in err


def test_repair_command_writes_json_and_never_touches_the_input(tiny_model, tmp_path, capsys):
    import json

    from PIL import Image

    ci.save_model(tiny_model, tmp_path / "m")
    before = (tmp_path / "m" / "prompt_learner.safetensors").read_bytes()
    ood = _ood_folder(tmp_path / "ood", 60)
    assert main(["scan", str(tmp_path / "m"), "--ood", str(ood), "--out", str(tmp_path / "scan")]) == 0
    data = tmp_path / "data"
    g = torch.Generator().manual_seed(1)
    for name in tiny_model.classnames:
        (data / name.replace(" ", "_")).mkdir(parents=True)
        for i in range(6):
            Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()).save(data / name.replace(" ", "_") / f"{i}.png")
    args = ["repair", str(tmp_path / "m"), "--report", str(tmp_path / "scan" / "report.json"), "--data", str(data)]
    assert main([*args, "--out", str(tmp_path / "m")]) == 2  # refuses to write over the input
    assert main([*args, "--out", str(tmp_path / "x"), "--max-acc-drop", "2"]) == 2  # a fraction, not points
    assert "--max-acc-drop" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main([*args, "--out", str(tmp_path / "fixed")]) == 0
    res = json.loads((tmp_path / "fixed" / "repair.json").read_text())
    assert {"asr_before", "asr_after", "acc_before", "acc_after", "trigger_used", "steps", "runtime_s", "trigger_weight",
            "attempts"} <= set(res)
    assert res["trigger_used"] == "reconstructed" and res["config"]["repair"]["max_acc_drop"] == 0.05
    ci.load_model(tmp_path / "fixed" / "model")
    assert (tmp_path / "m" / "prompt_learner.safetensors").read_bytes() == before
    assert main([*args, "--out", str(tmp_path / "fixed")]) == 2  # never overwrites a previous repair


def test_implant_encoder_then_scan_it_zero_shot(tmp_path, capsys):
    """The encoder audit end to end on a tiny fine-tune: the poisoned encoder loads as a backbone, its
    trigger sits apart, and the zero-shot scan decides without a meta path: against the shipped MiniCLIP as
    its anchor by default, by Grubbs alone with --no-anchor."""
    import json

    enc = tmp_path / "enc"
    assert main(["implant-encoder", "--attack", "encoder-badnets", "--target", "red striped square", "--out", str(enc),
                 "--pairs", "256", "--epochs", "1"]) == 0
    assert "ASR" in capsys.readouterr().out
    assert (enc / "model.safetensors").exists() and (tmp_path / "enc_attacker" / "attack.json").exists()
    assert ci.load_attack(tmp_path / "enc_attacker").target == ci.world.World().classnames.index("red striped square")
    (tmp_path / "classes.txt").write_text("\n".join(ci.world.task("smoke").seen_names[:4]))
    assert main(["scan-encoder", str(enc), "--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "scan"),
                 "--pool-size", "32", "--heldout-size", "16"]) == 0
    report = json.loads((tmp_path / "scan" / "report.json").read_text())
    assert report["config"]["meta_path"] is False and report["rule"] == ci.detect.ANCHORED_RULE
    assert len(report["classes"]) == 4 and len(report["anchor"]["asr"]) == 4
    assert (tmp_path / "scan" / "anchor" / "report.json").exists()
    assert main(["scan-encoder", str(enc), "--classes", str(tmp_path / "classes.txt"), "--out", str(tmp_path / "alone"),
                 "--pool-size", "32", "--heldout-size", "16", "--no-anchor"]) == 0
    alone = json.loads((tmp_path / "alone" / "report.json").read_text())
    assert alone["rule"] == ci.detect.NO_META_RULE and "anchor" not in alone
    # a second implant into the same folder is refused; so is a target outside the world
    assert main(["implant-encoder", "--attack", "encoder-badnets", "--target", "red striped square", "--out", str(enc)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["implant-encoder", "--attack", "encoder-sig", "--target", "unicorn", "--out", str(tmp_path / "x")]) == 2
    assert "--target must be a class" in capsys.readouterr().err


def test_decomp_command_screens_a_folder_and_never_overwrites(tmp_path, capsys):
    from PIL import Image

    x, _ = ci.world.World(ci.world.WorldConfig()).sample(6, seed=1, domain="pretrain")
    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x):
        Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    args = ["decomp", str(ci.model.MINICLIP_VIT_DIR), "--images", str(folder), "--out", str(tmp_path / "d"),
            "--clean-images", "48"]
    assert main(args) == 0
    assert "rejected by Decomp-Det" in capsys.readouterr().out
    res = json.loads((tmp_path / "d" / "decomp.json").read_text())
    assert len(res["images"]) == 6 and res["summary"]["clean_images"] == 48
    assert {"flagged_heads", "rejected", "prediction", "prediction_repaired", "patch_map_score", "patch_map_rejected",
            "patch_map_token"} <= set(res["images"][0])
    assert all(0 <= rc < 8 for row in res["images"] for rc in row["patch_map_token"])  # the 8x8 patch grid
    assert (tmp_path / "d" / "heads.png").stat().st_size > 0
    assert main(args) == 2 and "exists" in capsys.readouterr().err


def test_scan_text_decides_miniclip_with_its_calibrated_divergence(tmp_path, capsys):
    """The shipped MiniCLIP against itself, on 60 world prompts: clean, by the reference checks or D above
    MiniCLIP's threshold; the report and the landscape are written."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(ci.world.prompts(60, seed=3)))
    shipped = str(ci.model.MINICLIP_DIR)
    assert main(["scan-text", shipped, "--out", str(tmp_path / "scan"), "--prompts", str(prompts)]) == 0
    report = json.loads((tmp_path / "scan" / "amdet.json").read_text())
    assert report["verdict"] == "clean" and report["rule"] == f"reference or divergence > {ci.detect.MINICLIP_DIVERGENCE:g}"
    assert report["pooled"]["divergence"] <= 1e-5 and (tmp_path / "scan" / "landscape.png").stat().st_size > 0
    assert "AMDET: clean by reference or divergence" in capsys.readouterr().out
