"""Delivered-model checkpoints: safetensors + JSON metadata, validated on load; Dassl import.

A delivered model is untrusted input. Native checkpoints are safetensors (no code can run on load);
torch pickles (the Dassl layout of the CoOp/CoCoOp/BadCLIP code) are read with `weights_only=True`,
so a pickle carrying a payload is refused before anything executes.

Layout of a native model directory:
    model.json                 metadata (format, backbone, class names, n_ctx, ctx_init, preprocess, ...)
    prompt_learner.safetensors ctx, meta_net.linear1.{weight,bias}, meta_net.linear2.{weight,bias}
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..version import __version__
from .backbones import Backbone, backbone_from_spec
from .cocoop import CoCoOp

FORMAT = "ci_toolkit.cocoop"
FORMAT_VERSION = 1
METADATA_FILE = "model.json"
WEIGHTS_FILE = "prompt_learner.safetensors"
_KEYS = ("ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")


def model_metadata(model: CoCoOp) -> dict:
    pp = model.preprocess
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": __version__,
        "backbone": asdict(model.backbone.spec),
        "classnames": list(model.classnames),
        "n_ctx": model.n_ctx,
        "ctx_init": model.ctx_init_text,
        "preprocess": {"image_size": pp.image_size, "mean": list(pp.mean), "std": list(pp.std)},
    }


def save_model(model: CoCoOp, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the delivered model. Refuses to overwrite an existing model unless `overwrite=True`."""

    out = Path(out_dir)
    if (out / METADATA_FILE).exists() and not overwrite:
        raise CheckpointError(f"{out} already holds a model; choose another directory or pass overwrite=True")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous().clone() for k, v in model.prompt_learner.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp))  # write then rename: an interrupted save never leaves a half file
    tmp.replace(out / WEIGHTS_FILE)
    (out / METADATA_FILE).write_text(json.dumps(model_metadata(model), indent=2))
    return out


def _read_metadata(folder: Path) -> dict:
    if not folder.is_dir():
        raise CheckpointError(f"model directory not found: {folder}")
    meta_path, weights_path = folder / METADATA_FILE, folder / WEIGHTS_FILE
    for p in (meta_path, weights_path):
        if not p.is_file():
            hint = " (is this a Dassl output folder? use import_dassl)" if (folder / "prompt_learner").is_dir() else ""
            raise CheckpointError(f"{folder} is not a ci_toolkit model: {p.name} is missing{hint}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not ci_toolkit model metadata (format != {FORMAT!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} has format_version {meta['format_version']}; upgrade ci_toolkit")
    for key in ("backbone", "classnames", "n_ctx", "preprocess"):
        if key not in meta:
            raise CheckpointError(f"{meta_path} lacks the field {key!r}")
    names = meta["classnames"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise CheckpointError(f"{meta_path}: classnames must be a non-empty list of non-empty strings")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{meta_path}: classnames contains duplicates")
    return meta


def _check_state(state: dict[str, torch.Tensor], n_ctx: int, ctx_dim: int, vis_dim: int, source: str) -> None:
    hidden = max(1, vis_dim // 16)
    expected = {
        "ctx": (n_ctx, ctx_dim),
        "meta_net.linear1.weight": (hidden, vis_dim),
        "meta_net.linear1.bias": (hidden,),
        "meta_net.linear2.weight": (ctx_dim, hidden),
        "meta_net.linear2.bias": (ctx_dim,),
    }
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        raise CheckpointError(f"{source}: prompt-learner tensors missing {missing}, unexpected {extra}")
    for k, shape in expected.items():
        if tuple(state[k].shape) != shape:
            raise CheckpointError(
                f"{source}: {k} has shape {tuple(state[k].shape)}, expected {shape} for this backbone "
                f"(ctx_dim {ctx_dim}, vis_dim {vis_dim}, n_ctx {n_ctx})"
            )
        if not torch.isfinite(state[k]).all():
            raise CheckpointError(f"{source}: {k} contains NaN or Inf values")


def load_model(path: str | Path, backbone: Backbone | None = None, device="cpu") -> CoCoOp:
    """Load and validate a delivered model. The backbone is rebuilt from the metadata unless given."""

    folder = Path(path)
    meta = _read_metadata(folder)
    if backbone is None:
        backbone = backbone_from_spec(meta["backbone"], device=device)
    pp = meta["preprocess"]
    if int(pp.get("image_size", -1)) != backbone.preprocess.image_size:
        raise CheckpointError(
            f"model expects {pp.get('image_size')} px images, the backbone takes {backbone.preprocess.image_size}"
        )
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{folder / WEIGHTS_FILE} is corrupt or not safetensors: {exc}") from None
    n_ctx = int(meta["n_ctx"])
    _check_state(state, n_ctx, backbone.ctx_dim, backbone.vis_dim, str(folder / WEIGHTS_FILE))
    model = CoCoOp(backbone, meta["classnames"], n_ctx=n_ctx, ctx_init=meta.get("ctx_init"))
    model.prompt_learner.load_state_dict({k: v.float() for k, v in state.items()})
    return model.to(device)


# ---- the Dassl layout of the CoOp / CoCoOp / BadCLIP code bases --------------------------------------
def _latest(folder: Path, epoch: int | None) -> Path:
    if not folder.is_dir():
        raise CheckpointError(f"{folder} not found: not a Dassl output directory (expected {folder.name}/model.pth.tar-N)")
    if epoch is not None:
        p = folder / f"model.pth.tar-{epoch}"
        if not p.is_file():
            raise CheckpointError(f"{p} not found")
        return p
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(r"model\.pth\.tar-(\d+)", p.name))]
    if not found:
        raise CheckpointError(f"no model.pth.tar-N in {folder}")
    return max(found)[1]


def _safe_torch_load(p: Path) -> dict:
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"refused to load {p}: weights_only=True rejected it ({type(exc).__name__}). It may carry code; "
            "a delivered model is never unpickled with code execution."
        ) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{p} is not a Dassl checkpoint (no 'state_dict' dict)")
    return obj


def import_dassl(
    path: str | Path,
    classnames: list[str],
    backbone: Backbone,
    epoch: int | None = None,
    ctx_init: str | None = "a photo of a",
    check_prompts: bool = True,
):
    """Import `path/prompt_learner/model.pth.tar-N` (and `path/trigger/...` if present).

    Returns (model, trigger) where trigger is None or a dict {"delta": pixel-space [3, H, W] tensor,
    "target_name": str | None}: BadCLIP stores its trigger in NORMALISED space, multiplied back by std
    here. With check_prompts, the stored token_prefix/suffix must match the prompts rebuilt from
    `classnames` (catches wrong or reordered class names).
    """
    root = Path(path)
    ckpt = _safe_torch_load(_latest(root / "prompt_learner", epoch))
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    prefix, suffix = sd.pop("token_prefix", None), sd.pop("token_suffix", None)
    state = {k: v.float() for k, v in sd.items()}
    n_ctx = state["ctx"].shape[0] if "ctx" in state else 4
    if state.get("ctx") is not None and state["ctx"].ndim != 2:
        raise CheckpointError("class-specific contexts (ctx of rank 3) are not CoCoOp; not supported")
    _check_state(state, n_ctx, backbone.ctx_dim, backbone.vis_dim, str(root))
    if prefix is not None and prefix.shape[0] != len(classnames):
        raise CheckpointError(
            f"the checkpoint was trained on {prefix.shape[0]} classes but {len(classnames)} class names were given"
        )
    init = ctx_init if ctx_init and len(ctx_init.split(" ")) == n_ctx else None
    model = CoCoOp(backbone, classnames, n_ctx=n_ctx, ctx_init=init)
    model.prompt_learner.load_state_dict(state)
    if check_prompts and suffix is not None:
        mine = model.prompts_for()
        full_len = suffix.shape[1]
        mine_suffix = mine.suffix[:, : min(full_len, mine.suffix.shape[1])].float()
        theirs = suffix[:, : mine_suffix.shape[1]].float().to(mine_suffix.device)
        if theirs.shape != mine_suffix.shape or not torch.allclose(theirs, mine_suffix, atol=1e-2):
            raise CheckpointError(
                "the checkpoint's stored class prompts do not match the class names given (wrong names, "
                "wrong order, or another backbone). Pass the names in the split's label order."
            )
    trigger = None
    if (root / "trigger").is_dir():
        tckpt = _safe_torch_load(_latest(root / "trigger", epoch))
        t = tckpt["state_dict"].get("trigger")
        if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[:2] != (1, 3):
            raise CheckpointError("trigger checkpoint must hold 'trigger' of shape [1, 3, H, W]")
        std = torch.tensor(backbone.preprocess.std).view(3, 1, 1)
        trigger = {"delta": t[0].float() * std, "target_name": tckpt.get("target_name")}
    return model, trigger


def export_dassl(model: CoCoOp, path: str | Path, epoch: int = 10, trigger: torch.Tensor | None = None,
                 target_name: str | None = None) -> Path:
    """Write a model in the Dassl layout (for interoperability and for testing the importer)."""
    root = Path(path)
    (root / "prompt_learner").mkdir(parents=True, exist_ok=True)
    cp = model.prompts_for()
    sd = {k: v.detach().cpu() for k, v in model.prompt_learner.state_dict().items()}
    sd["token_prefix"], sd["token_suffix"] = cp.prefix.cpu(), cp.suffix.cpu()
    torch.save({"state_dict": sd, "epoch": epoch}, root / "prompt_learner" / f"model.pth.tar-{epoch}")
    if trigger is not None:
        (root / "trigger").mkdir(exist_ok=True)
        std = torch.tensor(model.preprocess.std).view(3, 1, 1)
        torch.save({"state_dict": {"trigger": (trigger / std).unsqueeze(0)}, "target_name": target_name, "epoch": epoch},
                   root / "trigger" / f"model.pth.tar-{epoch}")
    return root
