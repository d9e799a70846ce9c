"""Data sources, class-disjoint splits, P x K sampling, plain-torch transforms."""

from edgedml.data import glyphs as _glyphs  # noqa: F401  registers the glyphs source
from edgedml.data.dataset import ImageDataset, class_indices, collate_skip_bad, embed_images, sample_seed
from edgedml.data.folder import write_gallery_and_queries
from edgedml.data.images import check_image, image_sizes, load_image, scan_samples
from edgedml.data.prepare import PreparedData, prepare_data
from edgedml.data.sampler import PKSampler
from edgedml.data.sources import Sample, Source, default_input_size, load_source, named_sources
from edgedml.data.splits import Splits, class_disjoint_split
from edgedml.data.transforms import eval_transform, train_transform

__all__ = [
    "ImageDataset",
    "PKSampler",
    "PreparedData",
    "Sample",
    "Source",
    "Splits",
    "check_image",
    "class_disjoint_split",
    "class_indices",
    "collate_skip_bad",
    "default_input_size",
    "embed_images",
    "eval_transform",
    "image_sizes",
    "load_image",
    "load_source",
    "named_sources",
    "prepare_data",
    "sample_seed",
    "scan_samples",
    "train_transform",
    "write_gallery_and_queries",
]
