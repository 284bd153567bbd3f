"""Real image data: image folders as labelled sets or OOD pools, CoOp-format splits, the paper's datasets."""

from .folders import ImageSet, load_image_folder
from .paper import find_split_file, load_split_task
from .splits import build_ood_pool

__all__ = ["ImageSet", "load_image_folder", "find_split_file", "load_split_task", "build_ood_pool"]
