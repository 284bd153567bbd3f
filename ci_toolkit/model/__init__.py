"""The model being audited: frozen CLIP backbones, the CoCoOp prompt learner, its files and its training."""

from .backbones import Backbone, BackboneSpec, Preprocess, create_backbone, list_backbones, miniclip_name, save_backbone
from .checkpoint import export_dassl, import_dassl, load_model, save_model
from .cocoop import ClassPrompts, CoCoOp, PromptLearner
from .miniclip import ASSET_DIR as MINICLIP_DIR
from .miniclip import VIT_ASSET_DIR as MINICLIP_VIT_DIR
from .miniclip import MiniCLIPConfig, MiniViTConfig, class_contrastive_loss, class_text_features, load_miniclip, normalize_images
from .tuning import TrainConfig, evaluate, train
from .zeroshot import ZeroShotHead, zero_shot

__all__ = ["Backbone", "BackboneSpec", "Preprocess", "create_backbone", "list_backbones", "miniclip_name",
           "save_backbone", "load_model", "save_model",
           "import_dassl", "export_dassl", "CoCoOp", "PromptLearner", "ClassPrompts", "TrainConfig", "train", "evaluate",
           "ZeroShotHead", "zero_shot", "MINICLIP_DIR", "MINICLIP_VIT_DIR", "MiniCLIPConfig", "MiniViTConfig", "load_miniclip", "class_text_features", "class_contrastive_loss", "normalize_images"]
