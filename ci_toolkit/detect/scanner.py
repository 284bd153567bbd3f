"""The audit: scan a delivered model for a backdoor (docs/method.md).

    report = scan(model, ood)                         # a ScanReport, triggers in memory
    report = scan(model, ood, out_dir="runs/scan")    # also saved; an interrupted scan resumes from it

CLIP-Inspector: one trigger inverted per candidate class on the unlabeled OOD pool, its held-out ASR and
mean loss; the meta gains of the highest-ASR candidates' triggers; the gate probe; a rule from
`rules.RULES` decides. Baselines ("neural-cleanse", "pixel-backdoor"): the "mad" rule on their
trigger sizes.

While a scan with `out_dir` runs, OUT/partial/ holds each finished group of candidates: a scan
interrupted and started again with the same configuration continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..errors import CIError, DataError
from ..model.cocoop import CoCoOp
from ..model.zeroshot import meta_path_of
from ..workers import process_pool
from .baselines import CostConfig, run_baseline
from .calibration import DEFAULT_FPR, Calibration, backbone_key, calibration_for
from .inversion import Inversion, InversionConfig, invert
from .probes import gate_probe, meta_gains
from .report import AFTER_INVERSION_KEYS, GateProbe, ProbeUnit, ScanReport
from .rules import BASELINE_RULE, DEFAULT_RULE, Evidence, decide_evidence, scan_rules

METHODS = ("clip-inspector", "neural-cleanse", "pixel-backdoor")
# A model without a meta path (a zero-shot head) has no meta gains and no gate probe: the default rule, which
# reads them, cannot decide it; this rule (ASR and loss only, a one-outlier test at a stated alpha) does.
NO_META_RULE = "grubbs"
# ... unless the anchor (the public model the delivered one was tuned from) was scanned alike: then what the suspect
# gained over it decides, so that a class the public head itself sinks into is not taken for a target
ANCHORED_RULE = "anchored"


@dataclass(frozen=True)
class ScanConfig:
    """What a scan does; recorded in the report (docs/method.md gives each default's source)."""

    method: str = "clip-inspector"  # or "neural-cleanse" / "pixel-backdoor"
    inversion: InversionConfig = field(default_factory=InversionConfig)  # CLIP-Inspector's inversion
    baseline: CostConfig | None = None  # the baselines' optimisation (None: each method's own defaults)
    rule: str = DEFAULT_RULE  # CLIP-Inspector's decision rule, a name in rules.SCAN_RULES
    threshold: float | None = None  # overrides the rule's threshold (e.g. rules.youden_threshold)
    fpr: float = DEFAULT_FPR  # the calibrated rule flags at this false-positive rate (calibration.py)
    null_file: str | None = None  # the calibrated rule's null study; None: the one shipped for the backbone
    meta_candidates: int = 8  # the highest-ASR candidates whose triggers' meta gain is measured
    meta_images: int = 64  # held-out images the meta gains are measured on
    probe_eps: float | None = 16 / 255  # gate-probe bound; None: no probe (at either budget)
    # the gate probe again at a wider bound: the calibrated rule's second statistic, for a meta-path trigger that
    # the scan's smaller budgets do not reach (docs/method.md, "The wide probe, joined"); None: not run
    wide_probe_eps: float | None = 32 / 255
    probe_images: int = 512  # pool images the gate probe optimises on (one pass, batches of 32)
    probe_shut: bool = True  # the probe also shuts each unit (a trigger may work by shutting a gate)
    pool_size: int = 1000  # OOD images used for inversion
    heldout_size: int = 200  # further OOD images for each trigger's ASR
    seed: int = 0  # pool split and order

    def __post_init__(self):
        if self.method not in METHODS:
            raise CIError(f"unknown scan method {self.method!r}; choose one of {list(METHODS)}")
        if self.rule not in scan_rules():
            raise CIError(f"unknown decision rule {self.rule!r}; choose one of {scan_rules()}")
        if not 0 < self.fpr < 1:
            raise CIError(f"fpr must be a false-positive rate in (0, 1), got {self.fpr}")
        for name in ("probe_eps", "wide_probe_eps"):
            eps = getattr(self, name)
            if eps is not None and not 0 < eps <= 1:
                raise CIError(f"{name} must be an L-inf bound in (0, 1] (pixels in [0, 1]) or None, got {eps}")

    @property
    def ood_images(self) -> int:
        """How many OOD images the scan uses: the pool plus the held-out set."""
        return self.pool_size + self.heldout_size


def split_pool(images: torch.Tensor, cfg: ScanConfig, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of an OOD image set into (inversion pool, held-out ASR set)."""
    n = len(images)
    if n == 0:
        raise DataError("the OOD image set is empty")
    heldout = min(cfg.heldout_size, n // 5)
    pool = min(cfg.pool_size, n - heldout)
    if pool < batch_size or heldout == 0:
        raise DataError(f"the OOD set has {n} images: need at least {batch_size} for inversion (one batch) plus "
                        f"a held-out fifth for ASR ({cfg.pool_size} + {cfg.heldout_size} recommended)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed))
    return images[order[:pool]], images[order[pool : pool + heldout]]


def check_candidates(model: CoCoOp, candidates: list[str] | None) -> list[str]:
    """The candidate class list: the model's classes by default; a given list must contain them all."""
    names = list(model.classnames) if candidates is None else [c.strip() for c in candidates if c.strip()]
    if len(set(names)) != len(names):
        raise CIError("the candidate list has duplicate class names")
    missing = [c for c in model.classnames if c not in set(names)]
    if missing:
        raise CIError(f"{len(missing)} of the model's classes are missing from the candidate list "
                      f"(a backdoor target there would go unseen): {missing[:5]}")
    if len(names) < 3:
        raise CIError(f"need at least 3 candidate classes to score, got {len(names)}")
    return names


class _Partial:
    """Per-group results on disk, so that an interrupted scan resumes (same inversion settings only)."""

    def __init__(self, out: Path, config: dict):
        self.dir = out / "partial"
        self.dir.mkdir(parents=True, exist_ok=True)
        cfg_file = self.dir / "config.json"
        if cfg_file.exists():
            old = json.loads(cfg_file.read_text())
            if _inversion_part(old) != _inversion_part(config):
                raise CIError(f"{out} holds an unfinished scan with another configuration; "
                              f"use another --out, or delete {self.dir} to start over")
        else:
            cfg_file.write_text(json.dumps(config, indent=2, sort_keys=True))

    def load(self) -> dict[int, Inversion]:
        done = {}
        for f in sorted(self.dir.glob("group_*.json")):
            tensors = load_file(str(f.with_suffix(".safetensors")))
            for row in json.loads(f.read_text()):
                done[row["index"]] = Inversion(**row, delta=tensors[str(row["index"])])
        return done

    def save(self, results: list[Inversion]) -> None:
        stem = self.dir / f"group_{results[0].index:04d}"
        save_file({str(r.index): r.delta.contiguous() for r in results}, str(stem.with_suffix(".safetensors")))
        rows = [{k: v for k, v in asdict(r).items() if k != "delta"} for r in results]
        tmp = stem.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(stem.with_suffix(".json"))  # the json lands last: a group is done once it exists


def _inversion_part(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in AFTER_INVERSION_KEYS}


def scan(model: CoCoOp, ood: torch.Tensor, config: ScanConfig | None = None, out_dir: str | Path | None = None, *,
         candidates: list[str] | None = None, progress: bool = True, html: bool = True, workers: int = 1,
         anchor: CoCoOp | ScanReport | None = None) -> ScanReport:
    """Scan `model` with unlabeled OOD images [N, 3, H, W] (uint8 or float in [0, 1]).

    out_dir: where the report is saved (and an interrupted scan resumes from); candidates: class names to
    score (default: the model's classes); workers: processes that invert candidate groups and run the probe
    side by side (the result is the same up to float rounding, as the groups are cut differently).
    anchor: the benign public model the delivered one was tuned from (e.g. the zero-shot head of the public
    encoder over the same classes), or its scan: scanned alike (under out_dir/anchor), attached to the report,
    and, for a model without a meta path under the default rule, what decides (the anchored rule)."""
    cfg = config or ScanConfig()
    if not isinstance(cfg, ScanConfig):
        raise CIError(f"config must be a ScanConfig, got {type(cfg).__name__} (the output folder is out_dir=)")
    t0 = time.time()
    names = check_candidates(model, candidates)
    size = model.preprocess.image_size
    if ood.ndim != 4 or ood.shape[1] != 3 or ood.shape[-1] != size or ood.shape[-2] != size:
        raise DataError(f"OOD images must be [N, 3, {size}, {size}] for this model, got {tuple(ood.shape)}")
    pool, heldout = split_pool(ood, cfg, cfg.inversion.batch_size)
    out = Path(out_dir) if out_dir is not None else None
    meta_path = meta_path_of(model)
    if anchor is not None and cfg.method != "clip-inspector":
        raise CIError(f"an anchor is compared under CLIP-Inspector's scan, not {cfg.method}")
    final_rule = None  # the anchored rule decides once the anchor's scan is there; first the scan's own rule
    if cfg.method == "clip-inspector" and (cfg.rule == ANCHORED_RULE or (
            anchor is not None and not meta_path and cfg.rule == DEFAULT_RULE)):
        if anchor is None:
            raise CIError("the anchored rule needs the anchor: scan(model, ood, config, anchor=the public model)")
        final_rule, cfg = ANCHORED_RULE, replace(cfg, rule=DEFAULT_RULE)
    if not meta_path and cfg.method == "clip-inspector":
        cfg = replace(cfg, rule=NO_META_RULE if cfg.rule == DEFAULT_RULE else cfg.rule, probe_eps=None,
                      meta_candidates=0)
    recorded = {**asdict(cfg), "candidates": names, "pool_size": len(pool), "heldout_size": len(heldout),
                "backbone": backbone_key(model.backbone.spec), "meta_path": meta_path}
    if cfg.method == "clip-inspector":
        partial = _Partial(out, recorded) if out is not None else None
        done = partial.load() if partial else {}
        results = invert(model, pool, heldout, names, config=cfg.inversion, progress=progress,
                         on_group=partial.save if partial else None, skip=set(done), workers=workers)
        by_index = {**done, **{r.index: r for r in results}}
        inv = [by_index[i] for i in range(len(names))]
        probe, probe_deltas = measure_gate_probe(model, pool, heldout, names, cfg, workers, progress)
        if probe is not None and cfg.wide_probe_eps is not None:
            wide, wide_deltas = measure_gate_probe(model, pool, heldout, names, cfg, workers, progress,
                                                   eps=cfg.wide_probe_eps)
            probe, probe_deltas = probe.with_wide(wide), torch.cat([probe_deltas, wide_deltas])
        report = inversion_report(inv, cfg, measure_meta_gains(model, heldout, inv, names, cfg), probe,
                                  calibration_for(recorded))
        report.probe_triggers = probe_deltas
    else:
        res = run_baseline(cfg.method, model, pool, heldout, names, cfg=cfg.baseline, progress=progress)
        ev = Evidence(names=names, asr=res.asr, loss=res.loss, sizes=res.sizes)
        rows = [{"name": n, "asr": a, "loss": l, "size": z, "reached_bound": r}
                for n, a, l, z, r in zip(names, res.asr, res.loss, res.sizes, res.reached_bound)]
        report = ScanReport.from_decision(cfg.method, decide_evidence(ev, BASELINE_RULE), ev, rows,
                                          triggers=res.triggers)
    report.config, report.runtime_s, report.preview = recorded, time.time() - t0, heldout[:64]
    if anchor is not None:
        if not isinstance(anchor, ScanReport):
            anchor = scan(anchor, ood, cfg, out / "anchor" if out is not None else None, candidates=names,
                          progress=progress, html=False, workers=workers)
        report = report.with_anchor(anchor, model=str(anchor.config.get("backbone", "anchor")), rule=final_rule,
                                    threshold=cfg.threshold)
        if report.rule == ANCHORED_RULE and cfg.threshold is None and (
                not str(anchor.config.get("backbone", "")).startswith("miniclip:miniclip:")
                or any(getattr(cfg, k) != getattr(ScanConfig(), k) for k in ("inversion", "pool_size", "heldout_size"))):
            report.warnings.append("the anchored rule's threshold was set on MiniCLIP fine-tunes scanned with the "
                                   "default settings; for this anchor or these settings its false-positive rate is "
                                   "not measured (give a threshold from your own null)")
    if out is not None:
        report.save(out, html=html)
    return report


def inversion_report(inv: list[Inversion], cfg: ScanConfig, meta_gain: list[float | None],
                     probe: GateProbe | None = None, calibration: Calibration | None = None) -> ScanReport:
    """A CLIP-Inspector report from the inversions, their meta gains and the probe, decided under cfg's rule
    (the calibrated rule against `calibration`)."""
    names = [r.name for r in inv]
    index = {n: i for i, n in enumerate(names)}
    units = probe.units if probe else []
    ev = Evidence(names=names, asr=[r.asr for r in inv], loss=[r.loss for r in inv], meta_gain=list(meta_gain),
                  probes=[(index[u.class_name], u.asr, u.meta_gain) for u in units if not u.wide],
                  wide_probes=[(index[u.class_name], u.asr, u.meta_gain) for u in units if u.wide])
    rows = [{"name": r.name, "asr": r.asr, "loss": r.loss, "meta_gain": g, "losses": r.losses}
            for r, g in zip(inv, meta_gain)]
    d = decide_evidence(ev, cfg.rule, cfg.threshold, calibration)
    return ScanReport.from_decision("clip-inspector", d, ev, rows, probe,
                                    triggers=torch.stack([r.delta for r in inv]))


def measure_meta_gains(model: CoCoOp, heldout: torch.Tensor, inv: list[Inversion], names: list[str],
                       cfg: ScanConfig) -> list[float | None]:
    """Meta gains (logits) of the `cfg.meta_candidates` highest-ASR candidates' triggers; None for the rest."""
    top = sorted(range(len(inv)), key=lambda i: -inv[i].asr)[: cfg.meta_candidates]
    if not top:
        return [None] * len(inv)
    gains = meta_gains(model, heldout[: cfg.meta_images], torch.stack([inv[i].delta for i in top]), top,
                       model.prompts_for(names))
    out: list[float | None] = [None] * len(inv)
    for i, g in zip(top, gains.tolist()):
        out[i] = g
    return out


def _probe_worker(model: CoCoOp, pool, heldout, names, cfg: ScanConfig, tasks: list[tuple[bool, int]], threads: int,
                  on_unit=None, eps: float | None = None):
    """Gate-probe rows and deltas for (shut, unit) tasks at eps (default cfg.probe_eps), each row marked with its
    direction."""
    torch.set_num_threads(threads)
    rows, deltas = [], []
    for shut in (False, True):
        units = [u for s, u in tasks if s == shut]
        if units:
            bound = cfg.probe_eps if eps is None else eps
            r, d = gate_probe(model, pool, heldout, bound, model.prompts_for(names), cfg.meta_images,
                              cfg.seed, units, shut=shut, on_unit=on_unit)
            rows += [{**row, "shut": shut} for row in r]
            deltas.append(d)
    return rows, torch.cat(deltas)


def measure_gate_probe(model: CoCoOp, pool: torch.Tensor, heldout: torch.Tensor, names: list[str], cfg: ScanConfig,
                       workers: int = 1, progress: bool = False,
                       eps: float | None = None) -> tuple[GateProbe | None, torch.Tensor | None]:
    """The gate probe at eps (default cfg.probe_eps; each meta-net unit opened, then each shut when
    cfg.probe_shut) and its perturbations in the order of its units; (None, None) when cfg.probe_eps is None.
    workers > 1: the (direction, unit) tasks are split over that many processes."""
    if cfg.probe_eps is None:
        return None, None
    eps = cfg.probe_eps if eps is None else eps
    pool = pool[: cfg.probe_images]
    hidden = model.prompt_learner.meta_net.linear1.out_features
    tasks = [(shut, u) for shut in ((False, True) if cfg.probe_shut else (False,)) for u in range(hidden)]
    n = min(workers, len(tasks))
    with tqdm(total=len(tasks), desc="gate probe", unit="unit", disable=not progress) as bar:
        if n > 1:
            # interleaved, so that each process gets opening and shutting tasks alike
            chunks = [tasks[i::n] for i in range(n)]
            threads = max(1, torch.get_num_threads() // workers)
            with process_pool(n) as ex:
                parts = [f.result() for f in [ex.submit(_probe_worker, model, pool, heldout, names, cfg, c, threads,
                                                        None, eps) for c in chunks]]
            pairs = sorted(((r, d) for p in parts for r, d in zip(p[0], p[1])),
                           key=lambda rd: (rd[0]["shut"], rd[0]["unit"]))
            rows, deltas = [r for r, _ in pairs], torch.stack([d for _, d in pairs])
            bar.update(len(tasks))
        else:
            rows, deltas = _probe_worker(model, pool, heldout, names, cfg, tasks, torch.get_num_threads(),
                                         on_unit=lambda: bar.update(1), eps=eps)
    units = [ProbeUnit(r["unit"], names[r["class"]], r["asr"], r["meta_gain"], r["shut"]) for r in rows]
    return GateProbe(eps, len(pool), cfg.probe_shut, units), deltas


__all__ = ["METHODS", "ScanConfig", "scan", "inversion_report", "measure_meta_gains", "measure_gate_probe",
           "split_pool", "check_candidates", "NO_META_RULE", "ANCHORED_RULE"]
