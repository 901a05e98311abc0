"""Sphinx configuration of the robust-metric-learning documentation.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (from the repository root). The API
reference is written from the package's ``__all__`` and the results page from
``benchmarks/results/*.json`` before the build reads its sources.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import robust_metric_learning  # noqa: E402
from public_api import write_api_index  # noqa: E402
from results_page import write_results_page  # noqa: E402

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("MPLBACKEND", "Agg")

project = "robust-metric-learning"
author = "the robust-metric-learning developers"
copyright = "2026, " + author
release = robust_metric_learning.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

templates_path = ["_templates"]
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py", "auto_examples/*.zip",
                    "auto_examples/*.md5", "auto_examples/*.json"]
root_doc = "index"

autosummary_generate = True
autodoc_typehints = "none"       # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False  # torch's and scikit-learn's docstrings are not ours to render
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

sphinx_gallery_conf = {
    "examples_dirs": str(HERE.parent / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "doc_module": ("robust_metric_learning",),
    "backreferences_dir": "generated/backreferences",
    "reference_url": {"robust_metric_learning": None},
    "download_all_examples": False,
    "show_memory": False,
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = f"robust-metric-learning {release}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_prev_next": False,
    "footer_start": ["copyright"],
    "footer_end": [],
    "secondary_sidebar_items": ["page-toc"],
}
html_sidebars = {"index": [], "getting_started": [], "generated/results": [], "design": [], "changelog": []}
html_show_sourcelink = False


# written before Sphinx reads any source (autosummary reads api.rst when the builder starts)
(HERE / "generated").mkdir(exist_ok=True)
write_api_index(str(HERE / "api.rst"))
write_results_page(str(HERE / "generated" / "results.rst"), str(HERE.parent / "benchmarks" / "results"))


def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document only what the package defines: not scikit-learn's generated ``set_*_request``
    methods, nor members inherited from torch or scikit-learn."""
    if what != "class":
        return None
    target = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    module = getattr(target, "__module__", None) or ""
    if module and not module.startswith("robust_metric_learning"):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", _skip_foreign_members)
