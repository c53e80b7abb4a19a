"""grd_tools: the dataset toolkit for GRD, the Group Referring Dataset format.

"GRES" here is GROUP-wise referring expression segmentation (Wu et al., ICCV 2023): a group of
related images and one expression; the target is segmented in every image that has it and
declared absent elsewhere. It is not the GENERALIZED RES of gRefCOCO/ReLA.

This package never imports torch or transformers.
"""

from grd_tools.errors import GRDError, SchemaError, UnsafePathError
from grd_tools.format import (
    Expression,
    GRDDataset,
    Group,
    ImageRecord,
    Pair,
    load,
    save,
    schema,
    schema_errors,
)

__all__ = [
    "Expression",
    "GRDDataset",
    "GRDError",
    "Group",
    "ImageRecord",
    "Pair",
    "SchemaError",
    "UnsafePathError",
    "load",
    "save",
    "schema",
    "schema_errors",
]
