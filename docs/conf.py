"""Sphinx configuration for torch-foresight."""

from __future__ import annotations

import importlib.util
import os
import shutil
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

# -- math, offline ---------------------------------------------------------------------------------
# MathJax 3 is served by the built site itself, never from a CDN: the files come from the
# `sphinx-mathjax-offline` package (the docs extra), copied into _static/mathjax after the build.
# Only the CommonHTML bundle and what it loads on demand (TeX extensions, fonts, menu,
# accessibility) are copied. `make docs` then checks that no page loads anything from the network.
mathjax_path = "mathjax/tex-chtml.js"  # relative: inside the built _static/

_MATHJAX_PACKAGE = "sphinx-mathjax-offline"
_MATHJAX_SKIP = ("tex-svg*", "tex-mml-*", "tex-chtml-full*", "mml-*", "node-main.js", "svg",
                 "svg.js", "latest.js")


def _mathjax_dir() -> str:
    spec = importlib.util.find_spec(_MATHJAX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the docs need the {_MATHJAX_PACKAGE!r} package for offline math: "
            "pip install -e '.[docs]' (or run `make docs`)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "static", "mathjax")
    if not os.path.isfile(os.path.join(path, "tex-chtml.js")):
        raise RuntimeError(f"{path} has no tex-chtml.js: reinstall {_MATHJAX_PACKAGE}")
    return path


def _copy_mathjax(app, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    target = os.path.join(app.outdir, "_static", "mathjax")
    shutil.copytree(_mathjax_dir(), target, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(*_MATHJAX_SKIP))


def setup(app):
    _mathjax_dir()  # fail at the start, not after the build, when the package is missing
    app.connect("build-finished", _copy_mathjax)
