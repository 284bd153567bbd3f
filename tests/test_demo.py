"""The README's main job, under the smoke profile: the documented demo.json and an HTML summary."""

import json

from ci_toolkit.demo import DemoConfig, run_demo


def test_smoke_demo_writes_the_documented_keys(tmp_path):
    res = run_demo(tmp_path, DemoConfig("smoke"), progress=False)
    on_disk = json.loads((tmp_path / "demo.json").read_text())
    assert on_disk["config"]["models"].startswith("course zoo")  # the shipped models: nothing to train first
    # the lesson: the backdoor is found, the clean model is not accused, and the repair removes the backdoor
    assert on_disk["clean"]["verdict"] == "clean" and on_disk["backdoored"]["verdict"] == "backdoored", on_disk
    assert on_disk["backdoored"]["predicted_target"] == on_disk["backdoored"]["true_target"]
    assert on_disk["repair"]["asr_after"] < on_disk["repair"]["asr_before"] / 2
    assert {"verdict", "max_score", "true_target", "predicted_target"} <= set(on_disk["backdoored"])
    assert {"asr_before", "asr_after", "acc_before", "acc_after"} <= set(on_disk["repair"])
    assert on_disk["runtime_s"] == res["runtime_s"] > 0
    html = (tmp_path / "demo.html").read_text()
    assert "data:image/png;base64" in html and "Repair" in html
    for folder in ("clean_model", "backdoored_model", "repaired_model", "scan_clean", "scan_backdoored"):
        assert (tmp_path / folder).is_dir()
