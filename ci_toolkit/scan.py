"""The audit: scan a delivered model for a backdoor and write a report (METHOD 3, 4, 6).

    report = scan(model, pool, out_dir="runs/scan")           # CLIP-Inspector on the model's classes
    report["verdict"], report["predicted_target"]

OUT/report.json       verdict, scores, per-class ASR / loss / score / flag, config, runtime
OUT/report.html       the same with plots (scores, top reconstructed triggers) - class names escaped
OUT/triggers.safetensors   every candidate's reconstructed trigger (the repair step uses the top one)
OUT/partial/          per-group results while the scan runs: an interrupted scan resumes from them

Methods: "clip-inspector" (default), "neural-cleanse" and "pixel-backdoor" (baselines, METHOD 4).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .baselines import CostConfig
from .cocoop import CoCoOp
from .errors import CIError, DataError
from .invert import Inversion, InversionConfig, invert
from .score import INERT_GAIN, PAPER_K, RULES, decide

METHODS = ("clip-inspector", "neural-cleanse", "pixel-backdoor")


@dataclass(frozen=True)
class ScanConfig:
    """What a scan does; recorded in the report."""

    method: str = "clip-inspector"  # or "neural-cleanse" / "pixel-backdoor"
    inversion: InversionConfig = field(default_factory=InversionConfig)  # CLIP-Inspector's inversion
    baseline: CostConfig | None = None  # the baselines' optimisation (None: each method's own defaults)
    rule: str = "meta-gain"  # decision rule (score.RULES): "meta-gain" (default), "grubbs", "robust", "paper" (k = 2)
    threshold: float | None = None  # overrides the rule's threshold (e.g. a Youden-calibrated one)
    meta_candidates: int = 8  # the highest-ASR candidates whose meta gain is measured (score.py)
    meta_images: int = 64  # held-out images the meta gains are measured on
    probe_eps: float | None = 16 / 255  # gate probe (collapse.gate_probe) bound; None: no probe (docs/scan.md)
    probe_images: int = 512  # pool images the gate probe optimises on (one pass, batches of 32)
    probe_shut: bool = True  # the probe also shuts each unit (a trigger may work by shutting a gate, docs/scan.md)
    pool_size: int = 1000  # OOD images used for inversion
    heldout_size: int = 200  # further OOD images for each trigger's ASR
    seed: int = 0  # pool split and order

    def __post_init__(self):
        if self.method not in METHODS:
            raise CIError(f"unknown scan method {self.method!r}; choose one of {list(METHODS)}")
        if self.rule not in RULES:
            raise CIError(f"unknown decision rule {self.rule!r}; choose one of {list(RULES)}")


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


def world_ood(image_size: int, cfg: ScanConfig, seed: int = 123_456) -> torch.Tensor:
    """An OOD set from the embedded world: held-out shapes, never among any task's classes."""
    from .world import World, WorldConfig

    return World(WorldConfig(image_size=image_size)).sample_ood(cfg.pool_size + cfg.heldout_size, seed=seed + cfg.seed)


def check_candidates(model: CoCoOp, candidates: list[str] | None) -> list[str]:
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


DECISION_KEYS = ("rule", "threshold")  # decided after the inversion: changing them reuses every inverted trigger
# measured after the inversion, from its results: an unfinished scan's inverted groups do not depend on them
AFTER_INVERSION_KEYS = DECISION_KEYS + ("meta_candidates", "meta_images", "probe_eps", "probe_images", "probe_shut")


def _inversion_part(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in AFTER_INVERSION_KEYS}


def rescore(report: dict, rule: str, threshold: float | None = None) -> dict:
    """A CLIP-Inspector report decided again under another rule/threshold, from its per-class ASR and
    loss (the inversion is not rerun; the result equals a fresh scan with that rule)."""
    if report.get("method") != "clip-inspector":
        raise CIError(f"only CLIP-Inspector reports can be rescored, not {report.get('method')!r}")
    inv = [Inversion(c["name"], i, c["loss"], c["asr"], c.get("losses", []), torch.zeros(0))
           for i, c in enumerate(report["classes"])]
    cfg = ScanConfig(rule=rule, threshold=threshold)
    out = {**report, **_clip_inspector_report(inv, cfg, [c.get("meta_gain") for c in report["classes"]],
                                              report.get("gate_probe"))}
    out["config"] = {**report.get("config", {}), "rule": rule, "threshold": threshold}
    return out


class _Partial:
    """Per-group results on disk, so that an interrupted scan resumes (same config only)."""

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
        from safetensors.torch import load_file

        done = {}
        for f in sorted(self.dir.glob("group_*.json")):
            tensors = load_file(str(f.with_suffix(".safetensors")))
            for row in json.loads(f.read_text()):
                done[row["index"]] = Inversion(**row, delta=tensors[str(row["index"])])
        return done

    def save(self, results: list[Inversion]) -> None:
        from safetensors.torch import save_file

        stem = self.dir / f"group_{results[0].index:04d}"
        save_file({str(r.index): r.delta.contiguous() for r in results}, str(stem.with_suffix(".safetensors")))
        rows = [{k: v for k, v in asdict(r).items() if k != "delta"} for r in results]
        tmp = stem.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(stem.with_suffix(".json"))  # the json lands last: a group is done once it exists


def scan(model: CoCoOp, ood: torch.Tensor, out_dir: str | Path | None = None, candidates: list[str] | None = None,
         cfg: ScanConfig | None = None, progress: bool = True, html: bool = True, workers: int = 1) -> dict:
    """Scan `model` with OOD images [N, 3, H, W]; returns the report (and writes it when out_dir is given).

    workers: processes that invert candidate groups side by side (CLIP-Inspector only; the report is the
    same whatever the number up to float rounding: the groups are cut differently, so it is not part of the
    recorded config beyond `runtime_s`)."""
    cfg = cfg or ScanConfig()
    t0 = time.time()
    names = check_candidates(model, candidates)
    size = model.preprocess.image_size
    if ood.ndim != 4 or ood.shape[1] != 3 or ood.shape[-1] != size or ood.shape[-2] != size:
        raise DataError(f"OOD images must be [N, 3, {size}, {size}] for this model, got {tuple(ood.shape)}")
    pool, heldout = split_pool(ood, cfg, cfg.inversion.batch_size)
    out = Path(out_dir) if out_dir is not None else None
    config = {**asdict(cfg), "candidates": names, "pool_size": len(pool), "heldout_size": len(heldout)}
    if cfg.method == "clip-inspector":
        partial = _Partial(out, config) if out is not None else None
        done = partial.load() if partial else {}
        results = invert(model, pool, heldout, names, cfg=cfg.inversion, progress=progress,
                         on_group=partial.save if partial else None, skip=set(done), workers=workers)
        by_index = {**done, **{r.index: r for r in results}}
        inv = [by_index[i] for i in range(len(names))]
        probe = measure_gate_probe(model, pool, heldout, names, cfg, out, workers)
        report = _clip_inspector_report(inv, cfg, measure_meta_gains(model, heldout, inv, names, cfg), probe)
        deltas = torch.stack([r.delta for r in inv])
    else:
        from .baselines import run_baseline

        report, deltas = run_baseline(cfg.method, model, pool, heldout, names, cfg=cfg.baseline, progress=progress)
    report.update(method=cfg.method, config=config, runtime_s=time.time() - t0)
    if out is not None:
        _write(out, report, deltas, model, heldout, html)
    return report


def measure_meta_gains(model: CoCoOp, heldout: torch.Tensor, inv: list[Inversion], names: list[str],
                       cfg: ScanConfig) -> list[float | None]:
    """Meta gains (logits) of the `cfg.meta_candidates` highest-ASR candidates' triggers; None for the rest."""
    from .collapse import meta_gains

    top = sorted(range(len(inv)), key=lambda i: -inv[i].asr)[: cfg.meta_candidates]
    gains = meta_gains(model, heldout[: cfg.meta_images], torch.stack([inv[i].delta for i in top]), top,
                       model.prompts_for(names))
    out: list[float | None] = [None] * len(inv)
    for i, g in zip(top, gains.tolist()):
        out[i] = g
    return out


def _probe_worker(model: CoCoOp, pool, heldout, names, cfg: ScanConfig, tasks: list[tuple[bool, int]], threads: int):
    """Gate-probe rows and deltas for (shut, unit) tasks, each row marked with its direction."""
    from .collapse import gate_probe

    torch.set_num_threads(threads)
    rows, deltas = [], []
    for shut in (False, True):
        units = [u for s, u in tasks if s == shut]
        if units:
            r, d = gate_probe(model, pool, heldout, cfg.probe_eps, model.prompts_for(names), cfg.meta_images,
                              cfg.seed, units, shut=shut)
            rows += [{**row, "shut": shut} for row in r]
            deltas.append(d)
    return rows, torch.cat(deltas)


def measure_gate_probe(model: CoCoOp, pool: torch.Tensor, heldout: torch.Tensor, names: list[str], cfg: ScanConfig,
                       out: Path | None = None, workers: int = 1) -> dict | None:
    """The gate probe's report entry (collapse.gate_probe at cfg.probe_eps, each unit opened, then each unit
    shut when cfg.probe_shut; None when off); its perturbations go to out/gate_probe.safetensors in the
    order of the rows. workers > 1: the (direction, unit) tasks are split over that many processes."""
    if cfg.probe_eps is None:
        return None
    pool = pool[: cfg.probe_images]
    hidden = model.prompt_learner.meta_net.linear1.out_features
    tasks = [(shut, u) for shut in ((False, True) if cfg.probe_shut else (False,)) for u in range(hidden)]
    if workers > 1 and len(tasks) > 1:
        from .workers import process_pool

        # interleaved, so that each process gets opening and shutting tasks alike
        chunks = [tasks[i :: min(workers, len(tasks))] for i in range(min(workers, len(tasks)))]
        threads = max(1, torch.get_num_threads() // workers)
        with process_pool(len(chunks)) as ex:
            parts = [f.result() for f in [ex.submit(_probe_worker, model, pool, heldout, names, cfg, c, threads)
                                          for c in chunks]]
        pairs = sorted(((r, d) for p in parts for r, d in zip(p[0], p[1])), key=lambda rd: (rd[0]["shut"], rd[0]["unit"]))
        rows, deltas = [r for r, _ in pairs], torch.stack([d for _, d in pairs])
    else:
        rows, deltas = _probe_worker(model, pool, heldout, names, cfg, tasks, torch.get_num_threads())
    if out is not None:
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file({"deltas": deltas.contiguous()}, str(out / "gate_probe.safetensors"))
    return {"eps": cfg.probe_eps, "images": len(pool), "shut": cfg.probe_shut,
            "units": [{**r, "class": names[r["class"]]} for r in rows]}


def _warnings(d, names: list[str], meta_gain: list[float | None], probe: dict | None) -> list[str]:
    if d.fallback != "paper":
        return []
    gains = [abs(g) for g in meta_gain if g is not None] + [abs(u["meta_gain"]) for u in (probe or {}).get("units", [])]
    return [f"the prompt learner's meta tokens do not respond: no trigger the scan tried ({len(gains)}, inverted and "
            f"gate-probe) changes a class's margin through them by more than {INERT_GAIN} logits (largest "
            f"{max(gains):.4f}), so the meta-gain rule cannot see a backdoor in this model (one in the static "
            f"context looks like this). The verdict falls back to the paper's rule (s_t > {PAPER_K:g}): max "
            f"{d.max_score:.2f} on {names[d.top]!r}."]


def _clip_inspector_report(inv: list[Inversion], cfg: ScanConfig, meta_gain: list[float | None],
                           probe: dict | None = None) -> dict:
    asr = [r.asr for r in inv]
    loss = [r.loss for r in inv]
    index = {r.name: i for i, r in enumerate(inv)}
    probes = [(index[u["class"]], u["asr"], u["meta_gain"]) for u in probe["units"]] if probe else None
    d = decide(asr, loss, cfg.rule, cfg.threshold, meta_gain, probes)
    paper = decide(asr, loss, "paper")
    grubbs = decide(asr, loss, "grubbs")
    return {
        "verdict": d.verdict,
        "max_score": d.max_score,
        "threshold": d.threshold,
        "predicted_target": inv[d.predicted_target].name if d.predicted_target is not None else None,
        "top_class": inv[d.top].name,
        "gap": d.gap,
        "rule": d.rule,
        "fallback": d.fallback,
        "paper_rule": {"verdict": paper.verdict, "max_score": paper.max_score, "threshold": paper.threshold,
                       "gap": paper.gap},
        "grubbs_rule": {"verdict": grubbs.verdict, "max_score": grubbs.max_score, "threshold": grubbs.threshold,
                        "gap": grubbs.gap},
        "classes": [
            {"name": r.name, "asr": r.asr, "loss": r.loss, "score": s, "paper_score": ps, "meta_gain": mg,
             "flagged": fl, "losses": r.losses}
            for r, s, ps, mg, fl in zip(inv, d.scores, d.paper_scores, meta_gain, d.flagged)
        ],
        **({"gate_probe": probe} if probe else {}),
        "warnings": _warnings(d, [r.name for r in inv], meta_gain, probe),
    }


def _write(out: Path, report: dict, deltas: torch.Tensor, model: CoCoOp, heldout: torch.Tensor, html: bool) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({"deltas": deltas.contiguous()}, str(out / "triggers.safetensors"))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    if html:
        from .report import write_html

        write_html(out / "report.html", report, deltas, heldout)


def load_report(path: str | Path) -> tuple[dict, torch.Tensor]:
    """(report, deltas [K, 3, H, W]) of a finished scan (path: the folder or its report.json)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    folder = p.parent if p.suffix == ".json" else p
    rep = folder / "report.json"
    if not rep.exists():
        raise DataError(f"no scan report at {rep}")
    try:
        report = json.loads(rep.read_text())
        deltas = load_file(str(folder / "triggers.safetensors"))["deltas"]
    except (json.JSONDecodeError, OSError, KeyError, SafetensorError) as exc:
        raise DataError(f"unreadable scan report in {folder}: {exc}") from None
    return report, deltas


def target_trigger(report: dict, path: str | Path) -> tuple[str, torch.Tensor, str]:
    """(class, trigger [3, H, W], source) for repair: the report's predicted target (its top class when
    judged clean) and the trigger behind that class's score: its inverted trigger ("inversion"), or a
    gate-probe perturbation toward it that scored higher under the meta-gain rule ("gate probe, unit u").
    path: the scan's folder or its report.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    _, deltas = load_report(path)
    folder = Path(path).parent if Path(path).suffix == ".json" else Path(path)
    names = [c["name"] for c in report["classes"]]
    top = report.get("predicted_target") or report.get("top_class")
    if top not in names:
        raise DataError(f"the report's top class {top!r} is not among its candidates")
    i = names.index(top)
    gain = report["classes"][i].get("meta_gain")
    best, delta, source = report["classes"][i]["asr"] * max(gain or 0.0, 0.0), deltas[i], "inversion"
    probe = report.get("gate_probe")
    if probe and report.get("rule") == "meta-gain":
        try:
            probe_deltas = load_file(str(folder / "gate_probe.safetensors"))["deltas"]
        except (OSError, KeyError, SafetensorError) as exc:
            raise DataError(f"the report lists a gate probe but {folder / 'gate_probe.safetensors'} is unreadable: {exc}") from None
        if len(probe_deltas) != len(probe["units"]):
            raise DataError(f"{folder / 'gate_probe.safetensors'} holds {len(probe_deltas)} perturbations for "
                            f"{len(probe['units'])} probe units")
        for u, d in zip(probe["units"], probe_deltas):
            value = u["asr"] * max(u["meta_gain"], 0.0)
            if u["class"] == top and value > best:
                best, delta, source = value, d, f"gate probe, unit {u['unit']}{' shut' if u.get('shut') else ''}"
    return top, delta, source


__all__ = ["INERT_GAIN", "METHODS", "ScanConfig", "scan", "rescore", "measure_meta_gains", "measure_gate_probe", "target_trigger",
           "load_report", "split_pool", "world_ood", "check_candidates"]
