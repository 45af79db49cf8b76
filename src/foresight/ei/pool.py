"""Average pooling and adaptive average pooling -- re-exported from the layer core
(:mod:`foresight.layers.rules.pool`, where the connectivity is described)."""

from foresight.layers.rules.pool import PoolGraph, pool_create_matrix

__all__ = [
    "avgpool1d_create_matrix",
    "avgpool2d_create_matrix",
    "avgpool3d_create_matrix",
    "adaptive_avgpool1d_create_matrix",
    "adaptive_avgpool2d_create_matrix",
    "adaptive_avgpool3d_create_matrix",
    "PoolGraph",
    "pool_create_matrix",
]

avgpool1d_create_matrix = pool_create_matrix
avgpool2d_create_matrix = pool_create_matrix
avgpool3d_create_matrix = pool_create_matrix
adaptive_avgpool1d_create_matrix = pool_create_matrix
adaptive_avgpool2d_create_matrix = pool_create_matrix
adaptive_avgpool3d_create_matrix = pool_create_matrix
