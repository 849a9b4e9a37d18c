"""The notebooks run top to bottom in a fresh kernel (quick mode) and show their figures.

Every notebook in notebooks/ runs here, so every cell runs (as `make test-notebooks`, with
nbmake, also checks on its own); beyond that, this checks what a reader sees:
each cell that draws (`plt.show()`) displays an image, which a library that switches
matplotlib's backend on import would silently prevent.
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(__file__))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NOISE = ("The structure of `inputs` doesn't match",)


def _run(name, monkeypatch, timeout=600):
    monkeypatch.setenv("TFATTN_QUICK", "1")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    notebook = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": REPO}}).execute()
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _shows_an_image(cell):
    return any("image/png" in output.get("data", {}) for output in cell.outputs)


def _stderr(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == "stderr")


@pytest.mark.slow  # training in quick mode and an evaluation at 56 px: ~1-2 min on 2 cores
@pytest.mark.parametrize(
    "name", sorted(n for n in os.listdir(NOTEBOOKS) if n.endswith(".ipynb"))
)
def test_notebook_shows_a_figure_for_every_cell_that_draws(name, monkeypatch):
    cells = _run(name, monkeypatch)
    drawing = [cell for cell in cells if "plt.show()" in cell.source]
    assert drawing, f"{name} has no cell that draws"
    for cell in drawing:
        assert _shows_an_image(cell), f"{name}: no figure from\n{cell.source}"
    for cell in cells:
        for noise in NOISE:
            assert noise not in _stderr(cell), f"{name}: {noise!r} from\n{cell.source}"
