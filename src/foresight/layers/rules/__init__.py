"""The built-in rules, one module per kind of parameter use (importing registers them)."""

from foresight.layers.rules import (  # noqa: F401
    attention,
    conv,
    elementwise,
    embedding,
    linear,
    norm,
    pool,
)
