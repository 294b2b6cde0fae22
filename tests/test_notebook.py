"""notebooks/norm_dynamics.ipynb runs headless, every cell without error, on the saved results."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "norm_dynamics.ipynb"
#: results the notebook reads, and the script that writes each
INPUTS = {"fig1.csv": "scripts/reproduce_fig1.py", "fig2.csv": "scripts/reproduce_fig2.py",
          "fig2.md": "scripts/reproduce_fig2.py"}
KERNEL = "tensam-test"


def test_notebook_outputs_are_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"cells {dirty} of {NOTEBOOK.name} have outputs; strip them before commit"


def test_notebook_executes(tmp_path, monkeypatch):
    missing = [f"results/{name} (run {script})" for name, script in INPUTS.items()
               if not (REPO / "results" / name).exists()]
    if missing:
        pytest.skip(f"notebook inputs missing: {', '.join(missing)}")
    # A kernelspec for this interpreter (sys.executable), found first through JUPYTER_PATH.
    kernelspec.install(kernel_name=KERNEL, prefix=str(tmp_path))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=120,
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    images = sum("image/png" in out.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for out in c.outputs)
    assert images >= 2, f"expected the Figure 1 and Figure 2 plots, got {images} image(s)"
