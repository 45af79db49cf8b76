"""Convolutions and transposed convolutions -- re-exported from the layer core
(:mod:`foresight.layers.rules.conv`, where the connectivity is described)."""

from foresight.layers.graphs import compute_dtype
from foresight.layers.rules.conv import (
    ConvGraph,
    ConvTransposeGraph,
    compact_rows,
    conv_create_matrix,
    conv_transpose_create_matrix,
)

__all__ = [
    "conv_create_matrix",
    "conv1d_create_matrix",
    "conv2d_create_matrix",
    "conv3d_create_matrix",
    "conv_transpose_create_matrix",
    "conv_transpose1d_create_matrix",
    "conv_transpose2d_create_matrix",
    "conv_transpose3d_create_matrix",
    "ConvGraph",
    "ConvTransposeGraph",
    "compact_rows",
    "compute_dtype",
]

conv1d_create_matrix = conv_create_matrix
conv2d_create_matrix = conv_create_matrix
conv3d_create_matrix = conv_create_matrix
conv_transpose1d_create_matrix = conv_transpose_create_matrix
conv_transpose2d_create_matrix = conv_transpose_create_matrix
conv_transpose3d_create_matrix = conv_transpose_create_matrix
