"""The tour notebook runs from top to bottom: each section asserts what its text claims (the
tanh RNN's gradient fades fastest, clipping caps the norm, the forget bias opens the gate...)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.network  # its captioning section fetches the ImageNet MobileNetV2 weights on first use
@pytest.mark.slow
def test_the_tour_runs_and_keeps_its_pictures():
    import nbformat
    from nbclient import NotebookClient

    committed = nbformat.read(ROOT / "docs" / "tour.ipynb", as_version=4)
    pictures = sum("image/png" in out.get("data", {}) for cell in committed.cells if cell.cell_type == "code"
                   for out in cell.outputs)
    assert pictures >= 4  # committed with its outputs, so it reads on any viewer
    fresh = nbformat.read(ROOT / "docs" / "tour.ipynb", as_version=4)
    NotebookClient(fresh, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "docs")}}
                   ).execute()  # raises CellExecutionError on the first failing cell, its assertion included
    assert sum("image/png" in out.get("data", {}) for cell in fresh.cells if cell.cell_type == "code"
               for out in cell.outputs) == pictures
