"""Re-run examples/quickstart.ipynb in a real kernel and store its outputs in the file.

    python examples/refresh_notebook.py

The notebook runs in a temporary directory (its runs/ and exports do not land in the
repository); the test suite executes it the same way (tests/test_notebook.py).
"""

import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).with_name("quickstart.ipynb")


def execute(path: Path, workdir: str, timeout: int = 600) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": workdir}}).execute()
    return notebook


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as workdir:
        executed = execute(NOTEBOOK, workdir)
    nbformat.write(executed, NOTEBOOK)
    print(f"stored the outputs of {NOTEBOOK}", file=sys.stderr)
