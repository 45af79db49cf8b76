"""Checks on the built HTML documentation (run by ``make docs`` after ``sphinx-build``).

1. Offline: no page loads a script, style sheet, font or image from the network (a CDN), and the
   local MathJax that the pages load is there.
2. Complete: every public name of foresight's public modules (their ``__all__``, else the
   functions and classes they define) has an entry in the API reference (a Sphinx object anchor
   that resolves to that very object).

Usage: ``python docs/check_html.py docs/_build/html``; exits 1 and lists the problems.
"""

from __future__ import annotations

import html.parser
import importlib
import inspect
import pathlib
import re
import sys
from collections.abc import Iterable

#: The modules whose ``__all__`` is the public API (every name must be documented).
PUBLIC_MODULES = (
    "foresight",
    "foresight.results",
    "foresight.ei",
    "foresight.ei.graph",
    "foresight.gns",
    "foresight.ib",
    "foresight.causal",
    "foresight.monitor",
    "foresight.monitor.sinks",
    "foresight.data",
    "foresight.schedule",
    "foresight.plot.ei",
    "foresight.plot.dashboard",
    "foresight.plot.gns",
    "foresight.plot.ib",
    "foresight.plot.causal",
    "foresight.integrations.lightning",
    "foresight.distributed",
    "foresight.cli",
    "foresight.layers",
)

_REMOTE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)


class _Resources(html.parser.HTMLParser):
    """Collects the URLs a page *loads* (not the links a reader may follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str]] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if "id" in a:
            self.ids.append(a["id"])
        if tag in ("script", "img", "iframe", "audio", "video", "source", "embed") and "src" in a:
            self.loads.append((tag, a["src"]))
        if tag == "link" and "href" in a and not {"canonical", "alternate", "author", "help",
                                                  "license", "next", "prev", "search", "index",
                                                  "top", "up"} & set(a.get("rel", "").split()):
            self.loads.append((tag, a["href"]))
        if tag == "object" and "data" in a:
            self.loads.append((tag, a["data"]))


def remote_loads(root: pathlib.Path) -> list[str]:
    """``page: tag url`` for every resource a page loads from the network, and ``url(...)`` in
    the site's CSS files that points outside."""
    problems = []
    for page in sorted(root.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for tag, url in parser.loads:
            if _REMOTE.match(url):
                problems.append(f"{page.relative_to(root)}: <{tag}> loads {url}")
    for css in sorted(root.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        for url in re.findall(r"url\(\s*['\"]?([^'\")]+)", text) + re.findall(
            r"@import\s+['\"]([^'\"]+)", text
        ):
            if _REMOTE.match(url):
                problems.append(f"{css.relative_to(root)}: loads {url}")
    return problems


def local_mathjax_missing(root: pathlib.Path) -> list[str]:
    """Pages whose local MathJax script is not in the build."""
    problems = []
    for page in sorted(root.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for _, url in parser.loads:
            if "mathjax" in url.lower() and not _REMOTE.match(url):
                target = (page.parent / url.split("?")[0]).resolve()
                if not target.is_file():
                    problems.append(f"{page.relative_to(root)}: {url} is not in the build")
    return sorted(set(problems))


def documented_objects(root: pathlib.Path) -> set[tuple[int, str]]:
    """``(id(object), name)`` of every object with a Sphinx anchor (``id="foresight...."``)."""
    ids: set[str] = set()
    for page in root.rglob("*.html"):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        ids.update(parser.ids)
    found: set[tuple[int, str]] = set()
    for anchor in ids:
        is_module = anchor.startswith("module-")
        name = anchor[len("module-"):] if is_module else anchor
        if not name.startswith("foresight"):
            continue
        obj = resolve(name, module=is_module)
        if obj is not None:
            found.add((id(obj), name.rsplit(".", 1)[-1]))
    return found


def resolve(dotted: str, module: bool = False) -> object | None:
    """The object named by ``dotted``, found as Python finds ``a.b.c``: attribute first, then
    submodule (so ``foresight.causal.report`` is the function, not the module of that name);
    with ``module``, the module itself."""
    if module:
        try:
            return importlib.import_module(dotted)
        except ImportError:
            return None
    parts = dotted.split(".")
    try:
        obj: object = importlib.import_module(parts[0])
    except ImportError:
        return None
    for i, attr in enumerate(parts[1:], start=1):
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
            continue
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except ImportError:
            return None
    return obj


def public_names(modules: Iterable[str] = PUBLIC_MODULES) -> list[tuple[str, object]]:
    """``("module.name", object)`` for every name in the ``__all__`` of ``modules``."""
    out = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        names = getattr(module, "__all__", None)
        if names is None:  # the functions and classes the module defines
            names = [
                n for n, v in vars(module).items()
                if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                and getattr(v, "__module__", None) == module_name
            ]
        for name in names:
            if name.startswith("__"):  # __version__
                continue
            out.append((f"{module_name}.{name}", getattr(module, name)))
    return out


def undocumented(root: pathlib.Path, modules: Iterable[str] = PUBLIC_MODULES) -> list[str]:
    found = documented_objects(root)
    return [name for name, obj in public_names(modules)
            if (id(obj), name.rsplit(".", 1)[-1]) not in found]


def main(argv: list[str]) -> int:
    root = pathlib.Path(argv[1] if len(argv) > 1 else "docs/_build/html")
    if not (root / "index.html").is_file():
        print(f"check_html: {root} holds no built documentation (run sphinx-build first)")
        return 1
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))
    problems = remote_loads(root) + local_mathjax_missing(root)
    problems += [f"not in the API reference: {name}" for name in undocumented(root)]
    for p in problems:
        print(f"check_html: {p}")
    if not problems:
        pages = sum(1 for _ in root.rglob("*.html"))
        print(f"check_html: {pages} pages load nothing from the network; every public name of "
              f"{len(PUBLIC_MODULES)} modules is documented")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
