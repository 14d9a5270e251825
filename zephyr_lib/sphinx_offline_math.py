"""A Sphinx extension (``_config.yml``: ``sphinx.extra_extensions``): the book's math is
rendered by a MathJax served from the built site itself, never from a CDN, so the DPO loss reads
the same offline as online.

MathJax comes from a package registry like every other dependency: the pinned PyPI package
``django-static-mathjax`` (MathJax 3.2.2's release files; requirements.txt). At the end of an
HTML build this copies its ``es5`` files (the ``tex-chtml`` component, its fonts, the TeX
extensions it loads on demand, the menu and accessibility parts) into ``_static/mathjax/``;
``_config.yml`` points ``mathjax_path`` at ``mathjax/tex-chtml.js`` (relative to ``_static``).
"""
from __future__ import annotations

from pathlib import Path

#: what is copied from MathJax's es5 folder (the other combined bundles are not used)
PARTS = ("tex-chtml.js", "a11y", "adaptors", "input", "output", "sre", "ui")
TARGET = "mathjax"


def mathjax_es5() -> Path:
    """MathJax's es5 folder inside the installed package (an error naming the fix if missing)."""
    try:
        import mathjax
    except ImportError as e:  # pragma: no cover - a set-up problem, named
        raise RuntimeError("MathJax is not installed: pip install -r requirements.txt "
                           "(it comes from the package django-static-mathjax)") from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-chtml.js").is_file():
        raise RuntimeError(f"{es5} has no tex-chtml.js: reinstall django-static-mathjax")
    return es5


def copy_mathjax(out_static: Path) -> Path:
    """Copy MathJax's files into ``out_static/mathjax`` (idempotent); returns that folder."""
    import shutil

    es5, dest = mathjax_es5(), Path(out_static) / TARGET
    dest.mkdir(parents=True, exist_ok=True)
    for part in PARTS:
        src = es5 / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / part)
    return dest


def _build_finished(app, exc) -> None:
    if exc is None and app.builder.format == "html":
        copy_mathjax(Path(app.outdir) / "_static")


def _config_inited(app, config) -> None:
    path = config.mathjax_path or ""
    if "://" in path or path.startswith("//"):
        from sphinx.util import logging
        logging.getLogger(__name__).warning(
            f"mathjax_path is {path!r}: math will need the network (the book serves MathJax itself at "
            f"{TARGET}/tex-chtml.js)")


def setup(app):
    mathjax_es5()  # fail at start-up, not after the build, when MathJax is missing
    app.connect("config-inited", _config_inited)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
