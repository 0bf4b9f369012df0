"""Datasets: the registry of named datasets, `DatasetRef` (how a spec names one) and the loaders.

    from ptst.data import DatasetRef, load
    examples = load(DatasetRef(name="advbench"), data_dirs=[Path("../shared/data")])

Importing this package is cheap: the hub (`datasets`) and parquet readers are imported only when used.
"""

from ptst.data.loaders import Example, data_hash, load, load_file, read_rows, sample, search_dirs
from ptst.data.registry import DATA_EXTENSIONS, REGISTRY, DatasetInfo, DatasetRef, LocalFile, lookup

__all__ = [
    "DATA_EXTENSIONS",
    "REGISTRY",
    "DatasetInfo",
    "DatasetRef",
    "Example",
    "LocalFile",
    "data_hash",
    "load",
    "load_file",
    "lookup",
    "read_rows",
    "sample",
    "search_dirs",
]
