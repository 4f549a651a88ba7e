"""Sphinx configuration of gDBPool's documentation (Markdown pages through MyST).

Build it with ``./run docs`` (the same ``sphinx-build -W --keep-going`` that
``tests/docs/test_docs_build.py`` runs): every warning is an error.
"""

from __future__ import annotations

import sys
from pathlib import Path

# A source checkout documents itself, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gdbpool

project = "gDBPool"
author = "gDBPool developers"
copyright = "gDBPool developers"
release = gdbpool.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinxarg.ext",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings get anchors, so pages can link to a section: [text](page.md#section).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# The API is documented through the public names (gdbpool.X, actors.X) only.
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "signature"

html_theme = "alabaster"
html_title = f"gDBPool {release}"
html_static_path: list[str] = []
