"""Image sources and the manifest.

Each source (:mod:`.fashion_mnist`, the embedded default; :mod:`.imagefolder`, an ImageNet-style
folder; :mod:`.synthetic`, for tests) implements :class:`.source.ImageSource` and is named in
:data:`.registry.SOURCES`. The prepare stage lists the configured source's images in the manifest
(:mod:`.manifest`); later stages read pixels through :class:`.dataset.ImageDataset` and
:func:`.dataset.load_split_images`, as uint8 arrays (N, C, H, W).
"""

from pipeline.data.dataset import ImageDataset, load_split_images
from pipeline.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    fashion_mnist_help,
    read_fashion_mnist,
    read_idx,
)
from pipeline.data.imagefolder import (
    adm_center_crop,
    check_image_file,
    high_depth_to_uint8,
    is_high_depth,
    load_folder_image,
    read_class_name_map,
    to_rgb,
)
from pipeline.data.manifest import (
    FLIP_ID_OFFSET,
    MANIFEST_PATH,
    SPLITS,
    VAL_ID_OFFSET,
    build_manifest,
    num_channels,
    num_classes,
    read_class_names,
    read_manifest,
    write_prepared,
)
from pipeline.data.source import ImageSource, PrepareReport
from pipeline.data.synthetic import synthetic_image

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FLIP_ID_OFFSET",
    "MANIFEST_PATH",
    "SPLITS",
    "VAL_ID_OFFSET",
    "ImageDataset",
    "ImageSource",
    "PrepareReport",
    "adm_center_crop",
    "build_manifest",
    "check_image_file",
    "fashion_mnist_help",
    "high_depth_to_uint8",
    "is_high_depth",
    "load_folder_image",
    "load_split_images",
    "num_channels",
    "num_classes",
    "read_class_name_map",
    "read_class_names",
    "read_fashion_mnist",
    "read_idx",
    "read_manifest",
    "synthetic_image",
    "to_rgb",
    "write_prepared",
]
