"""Dataset readers (COCO detection, VOC segmentation, folder classification), the
embedded synthetic benchmark and the Avalanche stream."""
from .errors import DatasetError
from .readers import CocoDetection, FolderClassification, VocSegmentation
from .stream import DataRoot, Stream, build_stream, is_synthetic, load_split, resolve_data_root
from .synthetic import synthetic_root
from .transforms import JointTransform, Mosaic

__all__ = [
    "DatasetError", "CocoDetection", "FolderClassification", "VocSegmentation",
    "DataRoot", "Stream", "build_stream", "is_synthetic", "load_split", "resolve_data_root", "synthetic_root",
    "JointTransform", "Mosaic",
]
