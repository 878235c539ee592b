"""``colab.ipynb`` runs end to end (small setting, synthetic benchmark) in a real Jupyter kernel."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[dev]')")
import nbformat  # installed with nbclient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "colab.ipynb"


def _kernel_manager():
    """ipykernel's native ``python3`` kernel, i.e. THIS interpreter (``sys.executable``): no kernel
    spec registered anywhere (user, system, another environment) can replace it."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))


def _parameters_index(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must carry the 'parameters' tag"
    return tagged[0]


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    _parameters_index(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "clear the outputs of colab.ipynb"


def test_notebook_runs_end_to_end_small(synthetic_root, tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run_dir = tmp_path / "run"
    injected = nbformat.v4.new_code_cell(
        "# injected by tests/test_notebook.py\n"
        "import sys\n"
        f"assert sys.prefix == {sys.prefix!r}, sys.executable  # the test's own environment\n"
        "SMALL = True\n"
        f"RUN_DIR = {str(run_dir)!r}\n"
    )
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(_parameters_index(nb) + 1, injected)

    # the kernel inherits this process's environment: ONEHEAD_CACHE (conftest) makes the
    # notebook's synthetic benchmark the session's ``synthetic_root``
    client = nbclient.NotebookClient(nb, km=_kernel_manager(), timeout=600, allow_errors=False,
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()  # raises CellExecutionError (with the cell's output) when a cell fails

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["synthetic"] is True and Path(metrics["data_root"]).resolve() == Path(synthetic_root).resolve()
    assert metrics["image_size"] == 64
    result = json.loads((run_dir / "eval.json").read_text())
    for key in ("mIoU", "mAP", "Top-1"):
        assert type(result[key]) is float and 0.0 <= result[key] <= 1.0, (key, result[key])

    figure_cell = next(c for c in nb.cells if c.cell_type == "code" and "matrix.png" in c.source)
    assert any("image/png" in out.get("data", {}) for out in figure_cell.outputs), figure_cell.outputs
    eval_cell = next(c for c in nb.cells if c.cell_type == "code" and "eval.py" in c.source)
    assert any("text/markdown" in out.get("data", {}) for out in eval_cell.outputs)
