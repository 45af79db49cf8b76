"""``docs/check_html.py`` (run by ``make docs``) catches CDN loads and undocumented public names.

The real site is checked by ``make docs``; here the checker runs on small hand-made sites, so
that each of its checks is seen to fail when it should.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def check():
    spec = importlib.util.spec_from_file_location("check_html", ROOT / "docs" / "check_html.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def site(tmp_path: pathlib.Path, pages: dict[str, str]) -> pathlib.Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><head></head><body>{body}</body></html>")
    return tmp_path


def test_remote_scripts_styles_and_fonts_are_found(check, tmp_path):
    root = site(tmp_path, {
        "index.html": '<a href="https://pytorch.org">a link is fine</a>'
                      '<script src="_static/mathjax/tex-chtml.js"></script>',
        "ei.html": '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js">'
                   "</script>",
        "api/x.html": '<link rel="stylesheet" href="//fonts.example.org/x.css">'
                      '<link rel="next" href="https://example.org/next.html">'
                      '<img src="HTTP://example.org/a.png">',
        "_static/site.css": "body { background: url('https://example.org/bg.png') }",
    })
    (root / "_static" / "mathjax").mkdir(parents=True)
    (root / "_static" / "mathjax" / "tex-chtml.js").write_text("// local")
    problems = check.remote_loads(root)
    assert len(problems) == 4, problems
    assert any("ei.html" in p and "cdn.jsdelivr" in p for p in problems)
    assert any("api/x.html" in p and "<link>" in p for p in problems)
    assert any("api/x.html" in p and "<img>" in p for p in problems)
    assert any("site.css" in p for p in problems)
    assert check.local_mathjax_missing(root) == []
    (root / "_static" / "mathjax" / "tex-chtml.js").unlink()
    assert check.local_mathjax_missing(root) == [
        "index.html: _static/mathjax/tex-chtml.js is not in the build"
    ]


def test_undocumented_public_names_are_found(check, tmp_path):
    anchors = "".join(f'<dt id="foresight.schedule.{n}"></dt>'
                      for n in ("every", "log_spaced", "at", "Schedule"))
    root = site(tmp_path, {"index.html": anchors})
    assert check.undocumented(root, ["foresight.schedule"]) == ["foresight.schedule.never"]
    # an anchor must name the object itself: an alias documented under another name is not enough
    root = site(tmp_path, {"index.html": anchors
                           + '<dt id="foresight.ei.conv2d_create_matrix"></dt>'})
    import foresight.ei as fei

    assert fei.conv1d_create_matrix is fei.conv2d_create_matrix  # the same function ...
    missing = check.undocumented(root, ["foresight.ei"])
    assert "foresight.ei.conv1d_create_matrix" in missing  # ... still needs its own entry
    assert "foresight.ei.conv2d_create_matrix" not in missing


def test_resolve_prefers_attributes_like_python(check):
    import foresight.causal

    assert check.resolve("foresight.causal.report") is foresight.causal.report  # the function
    assert check.resolve("foresight.causal.report", module=True).__name__ == (
        "foresight.causal.report")
    assert check.resolve("foresight.ei.no_such_name") is None


def test_docs_config_loads_math_locally():
    conf = (ROOT / "docs" / "conf.py").read_text()
    assert 'mathjax_path = "mathjax/tex-chtml.js"' in conf
    assert "suppress_warnings" not in conf  # import failures are not hidden under -W
    makefile = (ROOT / "Makefile").read_text()
    assert "docs/check_html.py" in makefile
