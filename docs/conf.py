"""Sphinx configuration for torch-foresight."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath("../src"))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "torch-foresight"
author = "torch-foresight developers"
copyright = "2026, torch-foresight developers"

import foresight  # noqa: E402

release = foresight.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
nitpicky = False
exclude_patterns = ["_build"]
html_theme = "alabaster"
suppress_warnings = ["autodoc.import_object"]
