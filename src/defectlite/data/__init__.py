"""Data: readers, splits, the decoded-image cache and the one definition of preprocessing."""

from defectlite._lazy import lazy_attributes
from defectlite.data.locate import default_data_root, resolve_data_path
from defectlite.data.readers import DatasetIndex, Sample, detect_format, read_dataset
from defectlite.data.splits import find_leaks, stratified_split
from defectlite.data.transforms import normalize, to_uint8

# the PyTorch datasets load on first use: prediction imports defectlite.data.transforms without torch
__getattr__ = lazy_attributes(
    __name__,
    {
        "ArrayDataset": "defectlite.data.dataset",
        "SplitData": "defectlite.data.dataset",
        "prepare": "defectlite.data.dataset",
    },
)

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
