"""`python -m lab`: build zoos and run the benchmarks. Every command prints its own --help; user mistakes
exit 2 with one line (`ci_toolkit.cli.run`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ci_toolkit import CIError, get_profile, list_profiles
from ci_toolkit.detect import DEFAULT_FPR
from ci_toolkit.cli import add_scan_options, run, scan_config
from lab.bench.attacks import ALL as ALL_ATTACKS
from lab.bench.attacks import attacks_from_zoo, bench_attacks
from lab.bench.collapse import bench_collapse
from lab.bench.crossed import amdet_on_encoder_zoo, ci_on_text_zoo, divergence_threshold
from lab.bench.decomp import bench_decomp
from lab.bench.detect import METHOD_KEYS, bench_detect, combine_detect, roc_figure
from lab.bench.encoder import (
    anchored_null_figure,
    bench_encoder_attacks,
    bench_encoder_detect,
    bench_encoder_null,
    bench_invertune,
    encoder_figure,
)
from lab.bench.executors import bench_executors
from lab.bench.gates import EPS_255, bench_gates
from lab.bench.notebooks import bench_notebooks
from lab.bench.paths import bench_paths
from lab.bench.repair import bench_repair
from lab.bench.speed import MODELS, bench_speed
from lab.bench.world import bench_world
from lab.course import ship_course, ship_course_scans, widen_course_scans
from lab.encoder_zoo import AUDIT_STAGES, ENCODER_ZOO_PROFILES, build_encoder_zoo, calibrate_invertune
from lab.encoder_zoo import MIN_ASR as ENCODER_MIN_ASR
from lab.executors import add_executor_args, executor_from
from lab.null import null_figure, null_study, ship_null
from lab.probe_budget import bench_probe_budget, null_probe_budget
from lab.redecide import redecide
from lab.text_zoo import TEXT_ZOO_PROFILES, bench_amdet, build_text_zoo
from lab.zoo import MIN_ASR, build_zoo, list_zoo_profiles

PROG = "python -m lab"


def write_json(path: str | Path, obj: dict) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, default=float))
    print(f"wrote {p}")


def cmd_zoo(args) -> None:
    manifest = build_zoo(args.out, args.profile, executor=executor_from(args))
    print(f"{len(manifest)} models -> {args.out}/manifest.json")


def cmd_text_zoo(args) -> None:
    manifest = build_text_zoo(args.out, args.profile, executor=executor_from(args), scan=not args.no_scan)
    print(f"{len(manifest['models'])} text encoders -> {args.out}/manifest.json (AMDET reports in {args.out}/scans/)")


def cmd_encoder_zoo(args) -> None:
    manifest = build_encoder_zoo(args.out, args.profile, executor=executor_from(args), audit=not args.no_audit,
                                 stages=tuple(args.stages.split(",")),
                                 models=tuple(args.models.split(",")) if args.models else None)
    print(f"{len(manifest['models'])} encoders -> {args.out}/manifest.json (audits in {args.out}/scans/)")


def cmd_bench_decomp(args) -> None:
    res = bench_decomp(args.zoo, args.out, args.min_asr)
    print(f"wrote {args.out} (+ png): sum_rel_error {res['sum_rel_error']:.1e}; {res['n_patch']} patch, "
          f"{res['n_blend']} blend models; Decomp-Rep ASR {res['rep_asr_after']}, top-1 drop {res['rep_top1_drop']}; "
          f"Decomp-Det AUROC {res['det_auroc']} (STRIP {res['strip_auroc']})")


def cmd_bench_encoder(args) -> None:
    out = Path(args.out_dir)
    attacks = bench_encoder_attacks(args.zoo)
    write_json(out / "encoder_attacks.json", attacks)
    for name, a in attacks["attacks"].items():
        print(f"{name}: ASR min {a['asr']:.3f} (mean {a['asr_mean']:.3f}), top-1 drop max {a['top1_drop']:.3f}, "
              f"on the clean control {a['asr_clean_control']:.3f}")
    if args.attacks_only:
        return
    detect = bench_encoder_detect(args.zoo, args.min_asr, args.rest_from)
    write_json(out / "encoder_detect.json", detect)
    encoder_figure(attacks, detect, out / "encoder_detect.png")
    for key in ("clip_inspector_zero_shot", "clip_inspector_cocoop"):
        if key not in detect:
            continue
        d = detect[key]
        print(f"{key}: AUROC {d['auroc']:.3f}, F1 {d['f1']:.3f}, FPR {d['fpr']:.3f}, TPR {d['tpr']:.3f} "
              f"({d['n_backdoored']} poisoned, {d['n_clean']} clean; {d['zoo']})")
    builds = [(zoo, bench_invertune(zoo, args.min_asr)) for zoo in [args.zoo, *args.rest_from]]
    it = next((res for _, res in builds if res["n_backdoored"]), None)  # the first build with InverTune audits
    if it is None:  # no InverTune audits to read: invertune.json stays as it was
        print(f"no InverTune audits in {', '.join([args.zoo, *args.rest_from])}: {out / 'invertune.json'} not written")
        return
    key = "clip_inspector_repair_cocoop"  # CLIP-Inspector's repair of the CoCoOp case, from the first build with it
    if key not in it:
        zoo, rep = next(((z, r[key]) for z, r in builds if key in r), (None, None))
        if rep is not None:
            it[key] = {"zoo": str(zoo), **rep}
    write_json(out / "invertune.json", it)
    print(f"InverTune: target identified {it['target_id_rate']:.3f}; ASR after {it['asr_after']:.3f} "
          f"(max {it['asr_after_max']:.3f}); top-1 drop {it['acc_drop']:.3f}")


def cmd_bench_encoder_null(args) -> None:
    res = bench_encoder_null(args.zoo, args.fpr)
    write_json(args.out, res)
    anchored_null_figure(res, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} (+ png): {res['n_clean']} clean fine-tunes, anchored threshold "
          f"{res['anchored_threshold']} at FPR {args.fpr:g}; " +
          ", ".join(f"{k} flags {v['flagged']}" for k, v in res["fpr"].items()))


def cmd_bench_crossed(args) -> None:
    threshold = divergence_threshold(args.calib) if args.calib else None
    result = {"amdet_on_image_encoder_backdoors": amdet_on_encoder_zoo(args.encoder_zoo, threshold)
              if args.encoder_zoo else None,
              "clip_inspector_on_text_encoder_backdoors": ci_on_text_zoo(args.text_zoo) if args.text_zoo else None,
              "config": {"encoder_zoo": args.encoder_zoo, "text_zoo": args.text_zoo, "calib": args.calib}}
    write_json(args.out, result)
    for key in ("amdet_on_image_encoder_backdoors", "clip_inspector_on_text_encoder_backdoors"):
        if result[key]:
            print(f"{key}: {result[key]['flagged']} of {result[key]['n']} flagged; {result[key]['by_kind']}")
    amdet = result["amdet_on_image_encoder_backdoors"]
    if amdet and "flagged_divergence" in amdet:
        print(f"AMDET's divergence above {amdet['divergence_threshold']:.3f}: {amdet['flagged_divergence']} of {amdet['n']}")


def cmd_bench_invertune_calib(args) -> None:
    result = calibrate_invertune(args.zoo, args.out)
    print(f"wrote {args.out}")
    for t in result["trials"]:
        print(f"tune_lr {t['tune_lr']:g}: ASR after {t['asr_after']:.3f}, top-1 drop max {t['acc_drop_max']:.3f}")
    print(f"chosen: {result['chosen_tune_lr']:g}")


def cmd_bench_amdet(args) -> None:
    result = bench_amdet(args.zoo, args.calib, figure=Path(args.out).with_suffix(".png"))
    write_json(args.out, result)
    print(f"{result['n_backdoored']} backdoored, {result['n_benign']} benign: F1 {result['f1']:.3f} "
          f"({result['decision']}), AUROC {result['auroc']:.3f}; the reference thresholds: F1 {result['reference']['f1']:.3f}")


def cmd_course(args) -> None:
    rows = ship_course(args.zoo, args.out, min_asr=args.min_asr)
    print(f"{len(rows)} course models -> {args.out} ({sum(r['attack'] != 'clean' for r in rows)} backdoored)")


def cmd_course_scans(args) -> None:
    if args.widen:
        widen_course_scans(args.out, args.models.split(","), args.pool, args.heldout or args.pool)
        return
    ship_course_scans(args.out, args.methods.split(","), args.models.split(","), args.pool, args.work, args.heldout)


def cmd_null(args) -> None:
    result = null_study(args.out, n_models=args.models, source=args.ood, cfg=scan_config(args),
                        build=not args.finished_only, executor=executor_from(args), wide=args.wide)
    out = Path(args.result) if args.result else Path(args.out) / "null.json"
    write_json(out, result)
    null_figure(result, out.with_suffix(".png"))
    if args.ship:
        null = ship_null(args.out, result, args.ship)
        print(f"null study of {null.n_models} clean models ({null.backbone}) -> {args.ship}")
    for rule, r in result["rules"].items():
        print(f"{rule}: {r['n_flagged']} of {result['n_models']} clean models flagged, FPR {r['fpr']:.3f} "
              f"(95% CI {r['fpr_lower95']:.3f}-{r['fpr_upper95']:.3f})")


def cmd_redecide(args) -> None:
    res = redecide(args.null, args.bench, fpr=args.fpr, rules=tuple(args.rules.split(",")) if args.rules else None)
    write_json(args.out, res)
    for rule, r in res["rules"].items():
        for how in r:
            n, b = r[how]["null"], r[how].get("bench")
            line = (f"{rule:>10} {how:>10}: null FPR {n['fpr']:.3f} ({n['n_flagged']}/{n['n_models']}, "
                    f"upper {n['fpr_upper95']:.3f})")
            if b:
                line += f"; bench FPR {b['fpr']:.3f} TPR {b['tpr']:.3f} AUROC {b['auroc']:.3f} F1 {b['f1']:.3f}"
            print(line)


def cmd_probe_budget(args) -> None:
    if bool(args.study) == bool(args.zoo):
        raise CIError("give either --study DIR (a null study) or --zoo DIR --detect FILE")
    if args.zoo and not args.detect:
        raise CIError("--zoo needs --detect: the bench-detect result whose rows carry evidence")
    eps = args.budget / 255
    res = (null_probe_budget(args.study, eps, args.out, scan_config(args), workers=args.workers) if args.study
           else bench_probe_budget(args.zoo, args.detect, eps, args.out, scan_config(args), workers=args.workers))
    print(f"wrote {args.out}: {len(res['per_model'])} rows with the probe at {args.budget:g}/255 appended")


def cmd_bench_world(args) -> None:
    write_json(args.out, bench_world(quick=args.quick, seed=args.seed))


def cmd_bench_attacks(args) -> None:
    if args.zoo:
        write_json(args.out, attacks_from_zoo(args.zoo))
        return
    attacks = tuple(args.attacks.split(",")) if args.attacks else ALL_ATTACKS
    write_json(args.out, bench_attacks(attacks, seeds=tuple(range(args.seeds)), quick=args.quick))


def print_methods(result: dict) -> None:
    """One line per method of a detection benchmark."""
    for key, m in result["methods"].items():
        print(f"{key}: AUROC {m['auroc']:.3f}, accuracy {m['accuracy']:.3f}, F1 {m['f1']:.3f} ({m['n_models']} models)")


def cmd_bench_detect(args) -> None:
    out = Path(args.out)
    result = bench_detect(args.zoo, out.with_suffix(""), methods=args.methods.split(","), cfg=scan_config(args),
                          min_asr=args.min_asr, baseline_models=args.baseline_models, executor=executor_from(args),
                          baseline_pool=args.baseline_pool, scan_not_implanted=args.scan_not_implanted, ood=args.ood,
                          models_per_label=args.models_per_label)
    write_json(out, result)
    roc_figure(result, out.with_suffix(".png"))
    print_methods(result)


def cmd_bench_combine(args) -> None:
    parts = []
    for path in args.results.split(","):
        if not Path(path).is_file():
            raise CIError(f"no bench detect result at {path}")
        parts.append(json.loads(Path(path).read_text()))
    result = combine_detect(parts)
    write_json(args.out, result)
    roc_figure(result, Path(args.out).with_suffix(".png"))
    print_methods(result)


def cmd_bench_executors(args) -> None:
    result = bench_executors(args.zoo, args.work, workers=args.workers,
                             cfg=get_profile(args.profile).scan_config)
    write_json(args.out, result)
    for kind in ("local", "ray"):
        r = result[kind]
        print(f"{kind}: {r['wall_s']:.0f} s for {r['units']} models ({r['failures']} failed); "
              f"{r['overhead']['per_unit_s'] * 1000:.1f} ms per empty unit")
    print(f"same results: {result['same_results']}")


def cmd_bench_repair(args) -> None:
    result = bench_repair(args.zoo, args.detect or Path(args.out).with_suffix(""), scan_cfg=scan_config(args),
                          min_asr=args.min_asr)
    write_json(args.out, result)
    s = result["summary"]
    print(f"{s['n_models']} models: ASR {s['asr_before']:.3f} -> {s['asr_after']:.3f}, "
          f"ACC {s['acc_before']:.3f} -> {s['acc_after']:.3f}")


def cmd_bench_collapse(args) -> None:
    result = bench_collapse(args.zoo, min_asr=args.min_asr, per_class=args.per_class)
    write_json(args.out, result)
    for name, row in result["per_attack"].items():
        auc = ", ".join(f"{k} {v:.2f}" for k, v in row["auroc"].items())
        print(f"{name} ({row['n_models']} implanted): AUROC backdoored vs clean: {auc or 'n/a'}")


def cmd_bench_paths(args) -> None:
    result = bench_paths(args.zoo, args.detect, min_asr=args.min_asr)
    write_json(args.out, result)
    for name, row in result["per_attack"].items():
        seen = (f"; the default rule found {row['found']} of {row['n_scanned']} scanned ({row['found_static']} of "
                f"the static ones)" if "found" in row else "")
        print(f"{name}: {row['static_path']} of {row['n_models']} implanted take the static path{seen}")


def cmd_bench_gates(args) -> None:
    result = bench_gates(args.zoo, eps_255=tuple(float(e) for e in args.eps.split(",")), min_asr=args.min_asr)
    write_json(args.out, result)
    for name, row in result["per_attack"].items():
        cells = ", ".join(f"{e}/255 opening {v['opening'] if v['opening'] is None else round(v['opening'], 2)} "
                          f"ASR {v['asr']:.2f}" for e, v in row["eps"].items())
        print(f"{name} ({row['n_models']} implanted, trigger ASR {row['trigger_asr']:.2f}): {cells}")


def cmd_bench_notebooks(args) -> None:
    out = Path(args.out)
    result = bench_notebooks(out.with_suffix(""), profile=args.profile, html=args.html, figure=args.figure,
                             only=tuple(args.only.split(",")) if args.only else ())
    write_json(out, result)


def cmd_bench_speed(args) -> None:
    write_json(args.out, bench_speed(tuple(args.models.split(",")), k=args.k, batch=args.batch, device=args.device,
                                     bf16=args.bf16))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="The lab: zoos of clean and backdoored models, and the "
                                                       "benchmarks that write the JSON under benchmarks/.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("zoo", help="build a zoo of clean and backdoored models (resumable)",
                       description="Clean and backdoored models over several seeds and targets; DIR/manifest.json "
                                   "holds the ground truth. Finished models are skipped when a build is resumed.")
    s.add_argument("--profile", default="smoke", choices=list_zoo_profiles(),
                   help="what the zoo holds (lab/zoo.py, ZOO_PROFILES; default smoke)")
    s.add_argument("--out", required=True, help="zoo folder")
    s.add_argument("--workers", type=int, default=1, help="models trained in parallel (2 on a 2-core machine)")
    add_executor_args(s)
    s.set_defaults(func=cmd_zoo)

    s = sub.add_parser("text-zoo", help="build MiniCLIP text encoders (benign and backdoored) and AMDET-scan them",
                       description="Benign fine-tunes and text-encoder backdoors of MiniCLIP's text tower "
                                   "(lab/text_zoo.py); DIR/manifest.json holds the ground truth, DIR/scans/ AMDET's "
                                   "reports. Resumable.")
    s.add_argument("--profile", default="text-smoke", choices=list(TEXT_ZOO_PROFILES))
    s.add_argument("--out", required=True, help="zoo folder")
    s.add_argument("--workers", type=int, default=1, help="units run in parallel")
    s.add_argument("--no-scan", action="store_true", help="build only")
    add_executor_args(s)
    s.set_defaults(func=cmd_text_zoo)

    s = sub.add_parser("encoder-zoo", help="build MiniCLIP encoders (clean and poisoned) and audit them",
                       description="Clean and poisoned contrastive fine-tunes of MiniCLIP (lab/encoder_zoo.py), a clean "
                                   "CoCoOp over each; then CLIP-Inspector (zero-shot head, CoCoOp) and InverTune on "
                                   "each. DIR/manifest.json holds the ground truth. Resumable.")
    s.add_argument("--profile", default="encoder-smoke", choices=list(ENCODER_ZOO_PROFILES))
    s.add_argument("--out", required=True, help="zoo folder")
    s.add_argument("--workers", type=int, default=1, help="units run in parallel")
    s.add_argument("--no-audit", action="store_true", help="build only")
    s.add_argument("--stages", default=",".join(AUDIT_STAGES),
                   help="audits to run, comma-separated (zero_shot, cocoop, invertune, repair; scans = both "
                        "scans); each skips what is on disk")
    s.add_argument("--models", default="", help="audit only these models, comma-separated (mNNN; default: all); "
                                                "every model is still built")
    add_executor_args(s)
    s.set_defaults(func=cmd_encoder_zoo)

    s = sub.add_parser("course", help="ship a built course zoo into the package (ci_toolkit/assets/course)",
                       description="Copy the implanted models of a `zoo --profile course` build, with their ground "
                                   "truth apart in teacher/, into the course folder the tutorial loads.")
    s.add_argument("--zoo", required=True, help="a zoo built with --profile course")
    s.add_argument("--out", default="ci_toolkit/assets/course", help="the course folder (replaced)")
    s.add_argument("--min-asr", type=float, default=MIN_ASR, help="backdoored models below this seen ASR are left out")
    s.set_defaults(func=cmd_course)

    s = sub.add_parser("course-scans", help="scan course models and ship the reports (notebooks 04, 06, 07 start from them)",
                       description="Scan shipped course models with the given methods on world OOD images and copy "
                                   "each report.json to OUT/scans/<method>/<name>/ (ci.course.shipped_scan).")
    s.add_argument("--methods", default="neural-cleanse,pixel-backdoor", help="comma-separated scan methods")
    s.add_argument("--models", required=True, help="comma-separated course model names")
    s.add_argument("--pool", type=int, default=128, help="OOD images to optimise on")
    s.add_argument("--heldout", type=int, default=None, help="further OOD images for ASR (default: POOL)")
    s.add_argument("--work", default="runs/course_scans", help="where the scans are kept (a rerun reloads them)")
    s.add_argument("--out", default="ci_toolkit/assets/course", help="the course folder")
    s.add_argument("--widen", action="store_true",
                   help="add the wide gate probe to the shipped CLIP-Inspector scans of --models made without it")
    s.set_defaults(func=cmd_course_scans)

    s = sub.add_parser("null", help="the null study: clean models that vary what a provider varies, scanned",
                       description="Train N clean CoCoOp models (task seed, class list, class count, epochs, shots, "
                                   "lr, batch, context init drawn per model), scan each with the default scan, and "
                                   "report every rule's false-positive rate with its 95% Clopper-Pearson interval. "
                                   "Resumable.")
    s.add_argument("--out", required=True, help="study folder (models, scans, rows)")
    s.add_argument("--models", type=int, default=60, help="clean models (default 60)")
    s.add_argument("--ood", default="world", help="'world' (default) or an unlabeled image folder, e.g. real photos")
    s.add_argument("--result", default=None, help="result JSON (default OUT/null.json; a PNG beside it)")
    s.add_argument("--ship", default=None, metavar="FILE",
                   help="also write the study as the calibrated rule's null (e.g. ci_toolkit/assets/null/miniclip-world.json)")
    s.add_argument("--workers", type=int, default=1, help="models built and scanned in parallel")
    s.add_argument("--wide", default=None, metavar="FILE",
                   help="a probe-budget result on this study's kept scans (made without the wide probe): its probe "
                        "becomes each model's wide probe, for the calibrated rule's second statistic")
    add_executor_args(s)
    s.add_argument("--finished-only", action="store_true",
                   help="summarise the models finished so far; build and scan nothing")
    add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_null)

    s = sub.add_parser("redecide", help="every rule decided again from kept evidence (null and bench rows), no scan",
                       description="Decide every row of a null study and of bench-detect results again from the "
                                   "evidence they carry, with each rule at its own threshold and calibrated against "
                                   "the null at --fpr: the null's FPR (leave-one-out) and the benchmarks' FPR, TPR, "
                                   "AUROC and F1. Seconds; nothing is scanned.")
    s.add_argument("--null", required=True, help="the null study's result (OUT/null.json) or its rows_<ood>.json")
    s.add_argument("--bench", action="append", default=[], metavar="FILE",
                   help="a bench-detect result whose rows carry evidence (repeat to pool several zoos)")
    s.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                   help=f"false-positive rate to calibrate at (default {DEFAULT_FPR:g})")
    s.add_argument("--rules", default=None,
                   help="comma-separated rules (default: every rule that decides a scan alone)")
    s.add_argument("--out", required=True, help="result JSON: per rule, fixed and calibrated, null and bench metrics")
    s.set_defaults(func=cmd_redecide)

    s = sub.add_parser("probe-budget", help="the wide gate probe on kept scans made without it",
                       description="For each row with evidence of a null study (--study DIR) or of a bench-detect "
                                   "result (--zoo DIR --detect FILE), the gate probe at --budget/255 on the scan's own "
                                   "OOD split, as the row's wide probe (the calibrated rule's second statistic): "
                                   "`redecide` and `null --wide` read the output. Resumable. Scan options: those "
                                   "the scans ran with.")
    s.add_argument("--study", default=None, help="a null study folder (rows_world.json, models/, scans/world/)")
    s.add_argument("--zoo", default=None, help="a zoo folder (with --detect)")
    s.add_argument("--detect", default=None, help="the zoo's bench-detect result (its scans kept beside it)")
    s.add_argument("--budget", type=float, default=32.0,
                   help="the wide probe's L-inf budget in /255 (default 32, ScanConfig.wide_probe_eps)")
    s.add_argument("--out", required=True, help="result JSON: the rows with the probe appended (resumes)")
    s.add_argument("--workers", type=int, default=1, help="processes each model's probe units are split over")
    add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_probe_budget)

    b = sub.add_parser("bench", help="benchmarks that write JSON", description="Benchmarks; each writes a JSON file.")
    bsub = b.add_subparsers(dest="bench", metavar="BENCH")
    b.set_defaults(func=lambda a: b.print_help())

    s = bsub.add_parser("world", help="MiniCLIP zero-shot, clean CoCoOp and the backdoor regime",
                        description="Measure the embedded world: zero-shot, CoCoOp seen/unseen, and the BadCLIP "
                                    "regime table.")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quick", action="store_true", help="tiny sizes (for tests), numbers not meaningful")
    s.set_defaults(func=cmd_bench_world)

    s = bsub.add_parser("attacks", help="every attack: ACC, ASR (seen/unseen/OOD), trigger on the clean model, SSIM",
                        description="Train clean and backdoored models per attack and seed; write averaged metrics.")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--attacks", default=None, help="comma-separated subset (default: all)")
    s.add_argument("--seeds", type=int, default=2, help="number of seeds (default 2)")
    s.add_argument("--quick", action="store_true", help="tiny sizes (for tests), numbers not meaningful")
    s.add_argument("--zoo", default=None, help="summarise a built zoo's manifest instead of training (same metrics)")
    s.set_defaults(func=cmd_bench_attacks)

    s = bsub.add_parser("detect", help="scan every model of a zoo: AUROC, accuracy, class-level F1",
                        description="Scan a zoo with each method; write FILE (JSON) and FILE.png (ROC). Scans are "
                                    "kept in the folder FILE without its suffix and reused: a run resumes.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file (scans are kept next to it)")
    s.add_argument("--methods", default="clip-inspector", help=f"comma-separated: {','.join(METHOD_KEYS)}")
    s.add_argument("--min-asr", type=float, default=MIN_ASR,
                   help="backdoored models below this seen ASR count as not implanted")
    s.add_argument("--baseline-models", type=int, default=None,
                   help="scan only this many models with the slow baselines")
    s.add_argument("--scan-not-implanted", action="store_true",
                   help="also scan backdoored models whose attack did not implant")
    s.add_argument("--baseline-pool", type=int, default=None,
                   help="pool images for the baselines (default: --pool-size)")
    s.add_argument("--ood", default="world", help="'world' (default) or an unlabeled image folder, e.g. real photos")
    s.add_argument("--models-per-label", type=int, default=None,
                   help="scan only the first N clean and N backdoored models, the backdoored attack by attack "
                        "(a part of the zoo)")
    s.add_argument("--workers", type=int, default=1, help="models scanned in parallel (2 on a 2-core machine)")
    add_executor_args(s)
    add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_bench_detect)

    s = bsub.add_parser("executors", help="one zoo scanned with the local executor and with Ray: wall time, overhead",
                        description="Scan every model of a zoo from scratch with --executor local and with a Ray "
                                    "cluster of the same CPUs; wall seconds, failures, Ray's per-unit overhead and "
                                    "whether the verdicts, targets and scores agree. Needs Ray.")
    s.add_argument("--zoo", required=True, help="zoo folder (e.g. runs/zoo_course, the course's zoo)")
    s.add_argument("--out", default="benchmarks/executors.json", help="result JSON")
    s.add_argument("--work", default="runs/executors", help="where each executor's scans go (replaced)")
    s.add_argument("--workers", type=int, default=2, help="processes / Ray CPUs (default 2)")
    s.add_argument("--profile", default="classroom", choices=list_profiles(), help="whose scan settings (default classroom)")
    s.set_defaults(func=cmd_bench_executors)

    s = bsub.add_parser("repair", help="repair every backdoored model of a zoo with its scan's trigger",
                        description="Repair each implanted backdoored zoo model; attacker's-trigger ASR and ACC "
                                    "before/after.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--detect", default=None, help="a `bench detect` scans folder to reuse (default: FILE without "
                                                  "its suffix)")
    s.add_argument("--min-asr", type=float, default=MIN_ASR)
    add_scan_options(s, method_choice=False)
    s.set_defaults(func=cmd_bench_repair)

    s = bsub.add_parser("collapse", help="meta-token collapse per attack over a zoo (backdoored vs clean)",
                        description="collapse_stats of every attacked zoo model and the clean model of its seed, "
                                    "with the attacker's trigger; per-attack means and AUROC.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--min-asr", type=float, default=MIN_ASR,
                   help="attacked models below this seen ASR count as not implanted")
    s.add_argument("--per-class", type=int, default=4, help="task-domain images per class")
    s.set_defaults(func=cmd_bench_collapse)

    s = bsub.add_parser("paths", help="which path each implanted backdoor takes: meta tokens or static context",
                        description="With each attacker's own trigger on the default scan's held-out OOD images: "
                                    "ASR, ASR with the clean meta tokens, meta gain (logits) and L-inf size; with "
                                    "a bench detect result, whether the default rule found it.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--detect", default=None, help="a bench detect result of the same zoo (detect.json)")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--min-asr", type=float, default=MIN_ASR,
                   help="attacked models below this seen ASR count as not implanted")
    s.set_defaults(func=cmd_bench_paths)

    s = bsub.add_parser("gates", help="can an eps-bounded perturbation open the meta-net unit a backdoor uses?",
                        description="For every implanted zoo model: the meta-net hidden unit its trigger raises most, "
                                    "and what a universal perturbation optimised to raise that unit reaches at each "
                                    "eps; and each unit shut in turn on every scannable model.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--eps", default=",".join(f"{e:g}" for e in EPS_255),
                   help="comma-separated bounds in 1/255 pixel units")
    s.add_argument("--min-asr", type=float, default=MIN_ASR,
                   help="attacked models below this seen ASR count as not implanted")
    s.set_defaults(func=cmd_bench_gates)

    s = bsub.add_parser("notebooks", help="run every tutorial notebook in a fresh kernel; wall time per notebook",
                        description="Execute notebooks/NN_*.ipynb one at a time (papermill) under a profile; write "
                                    "FILE (JSON) and the executed notebooks beside it (FILE without .json).")
    s.add_argument("--out", required=True, help="output JSON file")
    s.add_argument("--profile", default="classroom", choices=list_profiles(),
                   help="the notebooks' profile (default classroom: what Run All uses)")
    s.add_argument("--only", default=None, help="comma-separated notebook names (default: all)")
    s.add_argument("--html", action="store_true", help="also render each executed notebook to HTML")
    s.add_argument("--figure", default=None, help="also draw notebook 04's scans of the clean and BadCLIP course "
                                                  "models to this PNG (the README's figure)")
    s.set_defaults(func=cmd_bench_notebooks)

    s = bsub.add_parser("combine", help="pool the scans of several `bench detect` results into one benchmark",
                        description="Pool the per-model rows of several bench detect results (e.g. the pre-registered "
                                    "zoos prereg and prereg2) and compute every method's metrics again over them.")
    s.add_argument("--results", required=True, help="comma-separated bench detect JSON files")
    s.add_argument("--out", required=True, help="output JSON (and a ROC figure beside it)")
    s.set_defaults(func=cmd_bench_combine)

    s = bsub.add_parser("encoder", help="an audited encoder zoo: attacks, detection, InverTune's repair",
                        description="From an `encoder-zoo` build: OUT_DIR/encoder_attacks.json, encoder_detect.json "
                                    "(+ .png) and invertune.json (lab/bench/encoder.py).")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out-dir", default="benchmarks")
    s.add_argument("--attacks-only", action="store_true", help="only encoder_attacks.json (before the audits ran)")
    s.add_argument("--rest-from", nargs="+", default=[], metavar="ZOO",
                   help="the audits --zoo lacks (the clean-CoCoOp case; InverTune and the repairs, invertune.json), "
                        "each from the first of these builds that has it")
    s.add_argument("--min-asr", type=float, default=ENCODER_MIN_ASR,
                   help=f"poisoned models below this ASR are left out of detection (default {ENCODER_MIN_ASR})")
    s.set_defaults(func=cmd_bench_encoder)

    s = bsub.add_parser("encoder-null", help="the anchored rule's null: clean fine-tunes' zero-shot scans against "
                                             "the public MiniCLIP's, the threshold at an FPR",
                        description="Needs: python -m lab encoder-zoo --profile encoder-null --out DIR --stages scans.")
    s.add_argument("--zoo", required=True, nargs="+", help="one or more builds of clean fine-tunes, pooled")
    s.add_argument("--out", default="benchmarks/encoder_null.json")
    s.add_argument("--fpr", type=float, default=0.05)
    s.set_defaults(func=cmd_bench_encoder_null)

    s = bsub.add_parser("decomp", help="a ViT encoder zoo decomposed: where each backdoor lives, Decomp-Rep, "
                                       "Decomp-Det vs STRIP, the decomposition's exactness",
                        description="Needs a built zoo: python -m lab encoder-zoo --profile decomp-vit --out DIR "
                                    "--no-audit. Per-model results are cached in DIR/decomp/.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", default="benchmarks/decomp.json")
    s.add_argument("--min-asr", type=float, default=ENCODER_MIN_ASR, help="ASR at which a model counts as implanted")
    s.set_defaults(func=cmd_bench_decomp)

    s = bsub.add_parser("crossed", help="AMDET on image-side encoder backdoors, CLIP-Inspector on text-side ones",
                        description="Each encoder audit on the other tower's backdoors (lab/bench/crossed.py): both "
                                    "should say clean.")
    s.add_argument("--encoder-zoo", default=None, help="an `encoder-zoo` build")
    s.add_argument("--text-zoo", default=None, help="a `text-zoo` build")
    s.add_argument("--calib", default=None, help="a scanned text-calib zoo: AMDET's divergence threshold")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_bench_crossed)

    s = bsub.add_parser("invertune-calib", help="choose InverTune's tuning lr for MiniCLIP on a calibration zoo",
                        description="InverTune with each lr of lab.encoder_zoo.TUNE_LRS on the BadNets models of an "
                                    "`encoder-zoo --profile encoder-calib` build; the lowest ASR within the top-1 bound. "
                                    "Resumable: the (lr, model) runs in OUT are kept.")
    s.add_argument("--zoo", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_bench_invertune_calib)

    s = bsub.add_parser("amdet", help="AMDET on a scanned text-encoder zoo: F1, AUROC, time per model",
                        description="Detection on a `text-zoo` build: the reference decision and, with --calib, a "
                                    "threshold per score (s1, best r_same) chosen on another zoo (Youden J).")
    s.add_argument("--zoo", required=True)
    s.add_argument("--calib", default=None, help="a scanned calibration zoo (text-calib)")
    s.add_argument("--out", required=True, help="output JSON (and a PNG beside it)")
    s.set_defaults(func=cmd_bench_amdet)

    s = bsub.add_parser("speed", help="one inversion step: naive reference vs the toolkit's path (equal loss and "
                                      "gradient)",
                        description="Time the naive and the fast inversion step for MiniCLIP and a ViT-B/16-sized "
                                    "random model.")
    s.add_argument("--out", required=True)
    s.add_argument("--models", default=",".join(MODELS))
    s.add_argument("--k", type=int, default=50, help="candidate classes")
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU machine)")
    s.add_argument("--bf16", action="store_true", help="the fast step under bfloat16 autocast")
    s.set_defaults(func=cmd_bench_speed)
    return p


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
