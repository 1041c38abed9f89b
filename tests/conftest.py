import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels can still be tested in Triton's interpreter on CPU tensors,
# but only if the variable is set before anything imports triton (torch.compile does): set
# it here, before any test module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture
def make_notebook(tmp_path):
    """Write a small notebook: a title cell followed by the given code cells."""
    import nbformat

    def _make(*code_cells: str, name: str = "nb.ipynb", title: str = "# A title") -> Path:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(title)] + [nbformat.v4.new_code_cell(c) for c in code_cells]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        path = tmp_path / name
        nbformat.write(nb, path)
        return path

    return _make
