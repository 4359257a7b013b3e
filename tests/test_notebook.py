"""examples/quickstart.ipynb runs end to end in a real Jupyter kernel, and ships with its outputs."""

import importlib.util
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _texts(notebook) -> list[str]:
    out = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            out.append(output.get("text", "") + str(output.get("data", {}).get("text/plain", "")))
    return out


def test_the_stored_notebook_has_its_outputs():
    notebook = nbformat.read(EXAMPLES / "quickstart.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code[1:])  # every cell after the imports shows its result
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_the_notebook_executes(tmp_path):
    spec = importlib.util.spec_from_file_location("refresh_notebook", EXAMPLES / "refresh_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    executed = module.execute(EXAMPLES / "quickstart.ipynb", str(tmp_path))  # raises CellExecutionError on failure
    text = "\n".join(_texts(executed))
    assert "PASS  causality" in text and "'status': 'completed'" in text and "'steps': 300" in text
    assert "12+34=" in text  # the sample
    assert "exported safetensors" in text and "max |logit diff| 0 (tolerance 0)" in text
    assert "classifier: confusion matrix at step 150" in text and "('times'," in text  # the classifier section
    images = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1  # run.plot() shows the dashboard
    assert list((tmp_path / "runs").glob("run-*/export-safetensors/model.safetensors"))
