"""Ten seconds before a long GPU run: the executor's packages import and a kernel executes a cell.

    python3 tools/gpu_env_check.py   (exit 0: ready; see CONTRIBUTING, "A GPU run on a lent machine")
"""

import time

import nbclient
import nbformat
import torch

start = time.perf_counter()
nb = nbformat.v4.new_notebook()
nb.cells.append(nbformat.v4.new_code_cell("import torch, resnorm; print(torch.cuda.is_available())"))
nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
printed = nb.cells[0].outputs[0]["text"].strip()
print(f"kernel ran a cell: cuda={printed}; host torch {torch.__version__}, cuda={torch.cuda.is_available()}; "
      f"{time.perf_counter() - start:.1f} s")
raise SystemExit(0 if printed == "True" else 1)
