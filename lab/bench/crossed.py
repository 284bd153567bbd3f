"""`python -m lab bench crossed`: each encoder audit on the OTHER tower's backdoors, where it should say "clean".

    AMDET (text tower) on the image-side encoder zoo: clean fine-tunes and poisoned image encoders (their text
        tower was fine-tuned too, with clean captions plus the target's caption on stamped images)
    CLIP-Inspector with the zero-shot head (image side) on a text-encoder zoo: benign text tunes and
        text-on-text / text-on-pair backdoors, over that zoo's task classes

Both write what each model was (kind), the verdict and the audit's own score; `flagged` counts "backdoored".
AMDET's rows also carry the pooled inversion's divergence D and, given a threshold on it (MiniCLIP's,
chosen on `text-calib` by `bench amdet`), `flagged_divergence` counts the models above it.
"""

from __future__ import annotations

import json
from pathlib import Path

import ci_toolkit as ci
from lab.encoder_zoo import ENCODER_ZOO_PROFILES
from lab.text_zoo import (
    SCORES,
    SHALLOW_PROMPTS,
    SHALLOW_SEED,
    TEXT_ZOO_PROFILES,
    calib_rows,
    calib_threshold,
    task_classes,
)


def _summary(rows: list[dict]) -> dict:
    kinds = sorted({r["kind"] for r in rows})
    return {"n": len(rows), "flagged": sum(r["verdict"] == "backdoored" for r in rows),
            "by_kind": {k: {"n": sum(r["kind"] == k for r in rows),
                            "flagged": sum(r["kind"] == k and r["verdict"] == "backdoored" for r in rows)}
                        for k in kinds},
            "models": rows}


def divergence_threshold(calib: str | Path) -> float:
    """The divergence threshold `bench amdet` takes from a scanned calibration text zoo (Youden J)."""
    return calib_threshold(calib_rows(calib), SCORES["divergence"])[0]


def amdet_on_encoder_zoo(zoo: str | Path, threshold: float | None = None) -> dict:
    """AMDET against the zoo's clean encoder (the shipped MiniCLIP or ViT MiniCLIP; the ViT's text tower is the
    ResNet's) as anchor, on every encoder of an `encoder-zoo` build; with `threshold`, also flags by D."""
    zoo = Path(zoo)
    manifest = json.loads((zoo / "manifest.json").read_text())
    backbone = ENCODER_ZOO_PROFILES[manifest["profile"]["name"]].backbone
    anchor = ci.create_backbone(backbone)
    shallow = anchor.tokenize(ci.world.prompts(SHALLOW_PROMPTS, SHALLOW_SEED))
    rows = []
    for r in manifest["models"]:
        suspect = ci.create_backbone(backbone, weights_file=zoo / "models" / r["name"] / "encoder")
        report = ci.scan_text_encoder(suspect, anchor, shallow)
        rows.append({"name": r["name"], "kind": r["attack"], "verdict": report.verdict, "s1": report.s1,
                     "divergence": report.divergence, "seconds": report.seconds})
        print(rows[-1], flush=True)
    out = _summary(rows)
    if threshold is not None:
        out.update(divergence_threshold=threshold,
                   flagged_divergence=sum(r["divergence"] > threshold for r in rows))
    return out


def ci_on_text_zoo(zoo: str | Path) -> dict:
    """CLIP-Inspector's default scan of the zero-shot head over the text zoo's task classes, on every text
    encoder of a built `text-zoo`."""
    zoo = Path(zoo)
    manifest = json.loads((zoo / "manifest.json").read_text())
    names = task_classes(TEXT_ZOO_PROFILES[manifest["profile"]["name"]])
    cfg = ci.ScanConfig()
    ood = ci.world.ood_pool(cfg.ood_images, seed=cfg.seed)
    rows = []
    for r in manifest["models"]:
        encoder = ci.create_backbone("miniclip", weights_file=zoo / "models" / r["name"])
        report = ci.scan(ci.model.zero_shot(encoder, names), ood, cfg, progress=False, html=False)
        rows.append({"name": r["name"], "kind": r["kind"], "verdict": report.verdict, "max_score": report.max_score,
                     "top_class": report.top_class, "rule": report.rule, "seconds": report.runtime_s})
        print(rows[-1], flush=True)
    return _summary(rows)


__all__ = ["amdet_on_encoder_zoo", "ci_on_text_zoo"]
