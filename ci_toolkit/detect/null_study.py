"""Build a null study for a backbone: clean prompt learners trained and scanned, their scores kept.

    null = ci.calibrate(backbone, images, labels, classnames, ood, "runs/null_vitb16")   # a NullStudy
    ci.scan(model, ood, ci.ScanConfig(null_file="runs/null_vitb16/null.json"))

Each clean model i tunes CoCoOp on a seeded random subset of the labelled classes with a seeded draw of
shots, epochs, learning rate, batch size and context init (`CalibrateConfig`): what a provider varies. It
is scanned with the scan configuration the null will calibrate, and its meta-gain statistic recorded (and
its wide-probe statistic, the calibrated rule's second statistic, with its classes' front of the two, when the
scan runs the wide probe).
Resumable: OUT/models/cNNN and OUT/scans/cNNN are kept, OUT/null.json is rewritten after every model.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import CIError, DataError
from ..model.backbones import Backbone
from ..model.checkpoint import load_model, save_model
from ..model.cocoop import CoCoOp
from ..model.tuning import TrainConfig, train
from .calibration import NullStudy, backbone_key, scan_settings
from .report import ScanReport
from .rules import class_front, meta_gain_statistic, wide_probe_statistic
from .scanner import ScanConfig, scan

MIN_CLASSES = 3  # a scan scores at least 3 candidate classes


@dataclass(frozen=True)
class CalibrateConfig:
    """What the clean models of a null study vary; model i draws one value of each (seeded by seed and i)."""

    # 60 clean models: p-values down to 1/61, so that a test at FPR 0.05 flags above the 3rd largest clean score
    n_models: int = 60
    class_fraction: tuple[float, float] = (0.5, 1.0)  # each model tunes on this fraction of the classes (at least 3)
    shots: tuple[int, ...] = (4, 8, 16)
    epochs: tuple[int, ...] = (2, 5, 10, 20)
    lr: tuple[float, ...] = (0.05, 0.1, 0.2)
    batch_size: tuple[int, ...] = (16, 32)
    ctx_init: tuple[str | None, ...] = ("a photo of a", None)  # None: a random context
    seed: int = 0


def model_spec(cfg: CalibrateConfig, i: int, n_classes: int) -> dict:
    """Clean model i of the study: its class subset (indices) and training recipe."""
    rng = random.Random(cfg.seed * 1_000_003 + i)
    lo = max(MIN_CLASSES, round(cfg.class_fraction[0] * n_classes))
    hi = max(lo, round(cfg.class_fraction[1] * n_classes))
    k = min(n_classes, rng.randint(lo, hi))
    return {"name": f"c{i:03d}", "seed": cfg.seed * 1_000_003 + i, "classes": sorted(rng.sample(range(n_classes), k)),
            **{f: rng.choice(getattr(cfg, f)) for f in ("shots", "epochs", "lr", "batch_size", "ctx_init")}}


def _train_one(backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: list[str],
               spec: dict) -> CoCoOp:
    g = torch.Generator().manual_seed(spec["seed"])
    keep = []
    for new, c in enumerate(spec["classes"]):
        idx = torch.nonzero(labels == c).flatten()
        keep.append((idx[torch.randperm(len(idx), generator=g)[: spec["shots"]]], new))
    x = torch.cat([images[i] for i, _ in keep])
    y = torch.cat([torch.full((len(i),), new) for i, new in keep])
    model = CoCoOp(backbone, [classnames[c] for c in spec["classes"]], ctx_init=spec["ctx_init"], seed=spec["seed"])
    train(model, x, y, TrainConfig(epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
                                   seed=spec["seed"]), progress=False)
    return model


def calibrate(backbone: Backbone, images: torch.Tensor, labels: torch.Tensor, classnames: list[str],
              ood: torch.Tensor, out_dir: str | Path, config: CalibrateConfig | None = None,
              scan_config: ScanConfig | None = None, progress: bool = True) -> NullStudy:
    """Train and scan `config.n_models` clean CoCoOp models on `backbone` from labelled images (labels index
    classnames) and scan each on `ood`; returns the null study (also OUT/null.json) for `scan_config`."""
    cfg, scfg = config or CalibrateConfig(), scan_config or ScanConfig()
    if cfg.n_models < 1:
        raise CIError(f"a null study needs at least one clean model, got n_models={cfg.n_models}")
    if len(classnames) < MIN_CLASSES:
        raise DataError(f"a null study needs at least {MIN_CLASSES} labelled classes, got {len(classnames)}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"calibrate": asdict(cfg), "scan": asdict(scfg),
                                                 "backbone": backbone_key(backbone.spec), "classes": classnames}, indent=2))
    scores, wide, fronts, names, settings = [], [], [], [], None
    for i in tqdm(range(cfg.n_models), desc="null study", unit="model", disable=not progress):
        spec = model_spec(cfg, i, len(classnames))
        model_dir, scan_dir = out / "models" / spec["name"], out / "scans" / spec["name"]
        if (scan_dir / "report.json").exists():
            report = ScanReport.load(scan_dir)
        else:
            if (model_dir / "model.json").exists():
                model = load_model(model_dir, backbone)
            else:
                model = _train_one(backbone, images, labels, classnames, spec)
                save_model(model, model_dir, overwrite=True)
            report = scan(model, ood, scfg, scan_dir, progress=False, html=False)
        ev = report.evidence()
        scores.append(meta_gain_statistic(ev))
        wide.append(wide_probe_statistic(ev))
        fronts.append(class_front(ev))
        names.append(spec["name"])
        settings = scan_settings(report.config)
        has_wide = all(w is not None for w in wide)
        null = NullStudy(backbone=backbone_key(backbone.spec), scores=tuple(scores), scan=settings,
                         wide_scores=tuple(wide) if has_wide else (), fronts=tuple(fronts) if has_wide else (),
                         models=tuple(names), ood=f"{len(ood)} images given to ci.calibrate",
                         source=f"ci.calibrate ({len(scores)} of {cfg.n_models} clean models, {len(classnames)} classes)")
        null.save(out / "null.json")
    return null


__all__ = ["calibrate", "CalibrateConfig", "model_spec"]
