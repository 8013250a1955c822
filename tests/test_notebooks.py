"""The example notebooks run as a user runs them (nbclient, a fresh kernel), on the bundled sample data, and
their expected figures hold (each notebook asserts its own)."""
import glob
import os

import pytest

from tests.conftest import require
from tests.helpers import ROOT

pytestmark = pytest.mark.slow
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "examples", "*.ipynb")))


def test_there_is_an_example_notebook():
    assert [os.path.basename(p) for p in NOTEBOOKS] == ["RETFound_MindSpore_demo.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_the_notebook_runs_and_its_figures_hold(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    require(nbclient, "nbclient (pip install -e '.[notebook]')")
    monkeypatch.setenv("RETFOUND_EXAMPLE_OUTPUT", str(tmp_path / "output_dir"))  # not into the checkout
    notebook = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "logistic regression on the embeddings: test accuracy" in printed
    assert os.path.exists(tmp_path / "output_dir" / "vit_tiny_patch16_depth2_fundus3_finetune" / "checkpoint-best.ckpt")
