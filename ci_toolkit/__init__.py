"""ci_toolkit: CLIP-Inspector, model-level backdoor detection for prompt-tuned CLIP (CoCoOp).

    import ci_toolkit as ci
    model = ci.load_model("delivered/")                      # untrusted: safetensors + JSON, validated
    report = ci.scan(model, ci.world.ood_pool(1200))         # invert, probe, decide -> ScanReport (with its p-value)
    print(report.summary())
    fixed, result = ci.repair(model, report, images, labels)  # unlearn with the trigger behind the verdict

The public API is `__all__`: these verbs and types, and the modules listed there (`model`, `detect`,
`attacks`, `world`, `course`, `data`, `analysis`, `decomp`, `metrics`, `notebook`) with their own `__all__`; everything
else is an implementation detail.
"""

from . import analysis, attacks, course, data, decomp, detect, metrics, model, notebook, world
from .analysis import collapse_stats
from .attacks import Attack, create_attack, list_attacks, load_attack
from .decomp import decompose
from .detect import (
    RULES,
    CalibrateConfig,
    Decision,
    Evidence,
    InversionConfig,
    NullStudy,
    ScanConfig,
    ScanReport,
    calibrate,
    decide,
    invert,
    scan,
    scan_text_encoder,
)
from .errors import BackboneUnavailableError, CheckpointError, CIError, DataError
from .metrics import attack_success_rate, backdoor_effect, evaluate_backdoor
from .model import (
    CoCoOp,
    TrainConfig,
    create_backbone,
    evaluate,
    export_dassl,
    import_dassl,
    list_backbones,
    load_model,
    save_model,
    train,
)
from .profiles import Profile, get_profile, list_profiles
from .repairing import RepairConfig, RepairResult, repair
from .version import __version__

__all__ = [
    "__version__",
    # the model: load, save, build, train
    "load_model", "save_model", "CoCoOp", "create_backbone", "list_backbones", "train", "TrainConfig", "evaluate",
    "import_dassl", "export_dassl",
    # attacks
    "create_attack", "list_attacks", "load_attack", "Attack",
    # the audit
    "scan", "ScanConfig", "ScanReport", "scan_text_encoder", "decide", "Decision", "Evidence", "RULES", "invert", "InversionConfig",
    "calibrate", "CalibrateConfig", "NullStudy",
    "repair", "RepairConfig", "RepairResult",
    # measuring
    "evaluate_backdoor", "attack_success_rate", "backdoor_effect", "collapse_stats",
    # inside the image encoder: heads, tokens and MLPs
    "decompose",
    # the embedded world, run profiles, notebook helpers
    "Profile", "get_profile", "list_profiles",
    # the public modules
    "model", "detect", "attacks", "world", "course", "data", "analysis", "decomp", "metrics", "notebook",
    # errors
    "CIError", "CheckpointError", "BackboneUnavailableError", "DataError",
]
