"""The built-in rules, one module per kind of parameter use (importing registers them)."""

from foresight.layers.rules import conv, elementwise, embedding, linear, norm  # noqa: F401
