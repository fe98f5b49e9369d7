"""Data: readers, splits, the decoded-image cache and the one definition of preprocessing."""

from defectlite.data.dataset import ArrayDataset, SplitData, prepare
from defectlite.data.locate import default_data_root, resolve_data_path
from defectlite.data.readers import DatasetIndex, Sample, detect_format, read_dataset
from defectlite.data.splits import find_leaks, stratified_split
from defectlite.data.transforms import normalize, to_uint8

__all__ = [
    "ArrayDataset",
    "DatasetIndex",
    "Sample",
    "SplitData",
    "default_data_root",
    "detect_format",
    "find_leaks",
    "normalize",
    "prepare",
    "read_dataset",
    "resolve_data_path",
    "stratified_split",
    "to_uint8",
]
