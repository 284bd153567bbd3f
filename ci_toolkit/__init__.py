"""ci_toolkit: CLIP-Inspector, model-level backdoor detection for prompt-tuned CLIP (CoCoOp)."""

__version__ = "0.1.0"

from .backbones import Backbone, BackboneSpec, Preprocess, create_backbone, list_backbones  # noqa: E402
from .checkpoint import export_dassl, import_dassl, load_cocoop, save_cocoop  # noqa: E402
from .cocoop import ClassPrompts, CoCoOp, PromptLearner  # noqa: E402
from .errors import BackboneUnavailableError, CheckpointError, CIError, DataError  # noqa: E402
from .profiles import Profile, get_profile, list_profiles  # noqa: E402
from .train import TrainConfig, evaluate, train_cocoop  # noqa: E402
from .world import World, WorldConfig  # noqa: E402

__all__ = [
    "__version__",
    "Backbone",
    "BackboneSpec",
    "Preprocess",
    "create_backbone",
    "list_backbones",
    "CoCoOp",
    "PromptLearner",
    "ClassPrompts",
    "save_cocoop",
    "load_cocoop",
    "import_dassl",
    "export_dassl",
    "CIError",
    "CheckpointError",
    "BackboneUnavailableError",
    "DataError",
    "World",
    "WorldConfig",
    "Profile",
    "get_profile",
    "list_profiles",
    "TrainConfig",
    "train_cocoop",
    "evaluate",
]
