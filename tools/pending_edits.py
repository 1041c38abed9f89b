"""Code-cell edits that wait for their page's next run on a GPU.

A code edit makes a page's committed outputs stale (``resnorm.stamps``), and the GPU pages can
only be re-executed on a GPU. So an edit to a GPU page's code cells waits here, written out,
and ``tools/gpu_session.sh`` applies it to the device's copy right before it executes the page:
the notebook that comes back carries the edit and outputs that belong to it.

    python3 tools/pending_edits.py book/experiments.ipynb     # apply (what gpu_session.sh does)
    python3 tools/pending_edits.py --check                    # does every edit still apply?

Each edit replaces a text that must occur exactly once in the page's code cells. Once the
re-executed page is committed, delete its entries: ``tests/test_tools.py`` fails while an
entry no longer applies, so a stale entry cannot go unnoticed, and neither can a code edit
on main that breaks a waiting one.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# page -> [(old text, new text, why)]
PENDING: dict[str, list[tuple[str, str, str]]] = {
    "book/experiments.ipynb": [
        (
            "        steps=800,\n        norm_steps=600,\n",
            "        steps=600,\n        norm_steps=450,\n",
            "the page took 343 s against its 240 s budget on an H200; with every capture kept "
            "the runs come to about 176 s at these step counts",
        ),
        (
            "        # On a GPU every step is replayed from CUDA graphs (measured on an H200: 3 to 5\n"
            "        # times faster than eager for these models)",
            "        # On a GPU every step is replayed from CUDA graphs (measured alone on an H200:\n"
            "        # 2.4 to 5.2 times faster than eager for these models)",
            "the calibration measured 3.2x (grid), 5.2x (depth) and 2.4x (norms), not 3 to 5",
        ),
        (
            '    "Wang et al. 2022",\n',
            '    "Wang et al. 2024",\n',
            "the bibliography cites the TPAMI version (2024; on arXiv since 2022)",
        ),
        (
            'goals.check("dong_residual_with_shortcuts", worst_skip, ">", 0.1, fmt=".2f")',
            'goals.check("dong_residual_with_shortcuts", worst_skip, ">", 0.1, fmt=".1e")',
            "the smallest residual with shortcuts (below 0.005) was printed as 0.00",
        ),
        (
            '    f"with: min {worst_skip:.2f}; "\n',
            '    f"with: min {worst_skip:.1e}; "\n',
            "the verdict table printed the same residual as 0.00",
        ),
    ],
    "book/training.ipynb": [
        (
            "):  # every held-out form occurs >= 15 times per 100,000 stream examples\n",
            "):  # the rarest held-out form occurs 12 times in these 100,000 stream examples\n",
            "a CPU replay of this sample (seed 1) found the rarest held-out form 12 times, not 15",
        ),
    ],
}


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def problems(nb: dict, edits: list[tuple[str, str, str]]) -> list[str]:
    """Why these edits would not apply to this notebook (an empty list when they all do)."""
    found = []
    for old, _new, _why in edits:
        count = sum(_source(c).count(old) for c in _code_cells(nb))
        if count != 1:
            found.append(f"occurs {count} times in the code cells, not once: {old.strip()[:70]!r}")
    return found


def apply(nb: dict, edits: list[tuple[str, str, str]]) -> dict:
    """The notebook with every edit made; raises ``ValueError`` if any does not apply."""
    wrong = problems(nb, edits)
    if wrong:
        raise ValueError("; ".join(wrong))
    for old, new, _why in edits:
        for cell in _code_cells(nb):
            text = _source(cell)
            if old in text:
                cell["source"] = text.replace(old, new).splitlines(keepends=True)  # as nbformat stores it
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", help="notebooks to edit in place (paths as in PENDING)")
    parser.add_argument("--check", action="store_true", help="only check that every edit applies")
    args = parser.parse_args(argv)
    status = 0
    pages = list(PENDING) if args.check else args.pages
    for page in pages:
        edits = PENDING.get(Path(page).as_posix(), [])
        path = ROOT / page
        nb = json.loads(path.read_text(encoding="utf-8"))
        wrong = problems(nb, edits)
        if wrong:
            print(f"{page}: {len(wrong)} pending edit(s) do not apply: " + "; ".join(wrong))
            status = 1
            continue
        if not args.check and edits:
            apply(nb, edits)
            path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        verb = "apply" if args.check else "applied"
        print(f"{page}: {len(edits)} pending edit(s) {verb}")
    return status


if __name__ == "__main__":
    sys.exit(main())
