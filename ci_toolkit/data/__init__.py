"""Real image data: image folders as labelled sets or OOD pools, CoOp-format splits, the paper's datasets."""

from .folders import IMAGE_EXTENSIONS, ImageSet, load_image, load_image_folder
from .paper import find_split_file, load_split_task
from .splits import (
    base_new_split,
    build_ood_pool,
    generate_fewshot,
    load_split,
    overlaps,
    read_and_split_data,
    save_fewshot,
    save_split,
    split_trainval,
)

__all__ = ["IMAGE_EXTENSIONS", "ImageSet", "load_image", "load_image_folder", "find_split_file", "load_split_task",
           "base_new_split", "build_ood_pool", "generate_fewshot", "load_split", "overlaps", "read_and_split_data",
           "save_fewshot", "save_split", "split_trainval"]
