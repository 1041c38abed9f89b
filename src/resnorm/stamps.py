"""Stamps: where and how a notebook's committed outputs were produced, and the stale check.

The executor (:mod:`resnorm.execute`) writes a stamp into each notebook's metadata under
``metadata["resnorm"]["stamp"]`` and a one-line markdown cell (tagged ``resnorm-stamp``)
under the title, so that the rendered page says which hardware made its outputs.

The stamp holds a hash of the notebook's code cells. :func:`check` compares it with
the code as it is now: if somebody edited a code cell after the notebook was executed,
the committed outputs no longer belong to the code, and the check says so.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

STAMP_TAG = "resnorm-stamp"
METADATA_KEY = "resnorm"


def code_hash(nb: dict) -> str:
    """SHA-256 of the notebook's code cells, ignoring outputs, metadata and trailing blanks."""
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        digest.update(source.rstrip().encode("utf-8"))
        digest.update(b"\x1e")  # record separator: moving text across a cell boundary changes the hash
    return digest.hexdigest()


def format_duration(seconds: float) -> str:
    """``192.4 -> '3 min 12 s'``; ``8.2 -> '8.2 s'``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def stamp_line(stamp: dict) -> str:
    """The sentence shown under the title of an executed page."""
    return (
        f"Executed on {stamp['device']}, torch {stamp['torch']}, {stamp['mode']} mode, "
        f"{stamp['date'][:10]}, in {format_duration(stamp['wall_s'])}."
    )


def stamp_cell_source(stamp: dict) -> str:
    return (
        f'<p class="resnorm-stamp">{stamp_line(stamp)} '
        f"The outputs below come from that run (code hash <code>{stamp['code_sha256'][:12]}</code>).</p>"
    )


def get_stamp(nb: dict) -> dict | None:
    return nb.get("metadata", {}).get(METADATA_KEY, {}).get("stamp")


def read_notebook(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def toc_files(root: str | Path = ".") -> list[Path]:
    """The files listed in ``_toc.yml`` (``root`` and every ``file:`` entry), resolved to existing paths.

    A toc entry without a suffix is looked up as ``.ipynb`` then ``.md``; an entry that
    matches no file raises, because the table of contents must list only pages that exist.
    """
    root = Path(root)
    text = (root / "_toc.yml").read_text(encoding="utf-8")
    entries = re.findall(r"^\s*-?\s*(?:root|file):\s*(\S+)\s*$", text, flags=re.MULTILINE)
    files = []
    for entry in entries:
        entry = entry.strip("'\"")
        candidates = [root / entry] if Path(entry).suffix else [root / f"{entry}.ipynb", root / f"{entry}.md"]
        found = [c for c in candidates if c.exists()]
        if not found:
            raise FileNotFoundError(f"_toc.yml lists {entry!r}, but no such page exists")
        files.append(found[0])
    return files


def toc_notebooks(root: str | Path = ".") -> list[Path]:
    return [p for p in toc_files(root) if p.suffix == ".ipynb"]


@dataclass
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def check_notebook(path: str | Path) -> list[Problem]:
    """Everything wrong with one notebook's committed outputs (an empty list when it is fresh)."""
    path = Path(path)
    nb = read_notebook(path)
    redo = f"re-execute it with `python -m resnorm.execute --mode MODE {path}` (MODE: cpu, or full on a GPU)"
    stamp = get_stamp(nb)
    if stamp is None:
        return [Problem(path, f"has no execution stamp; {redo}")]
    problems = []
    current = code_hash(nb)
    if stamp.get("code_sha256") != current:
        problems.append(
            Problem(
                path,
                f"its code changed after it was executed (stamp hash {stamp.get('code_sha256', '')[:12]}, "
                f"code now {current[:12]}), so its outputs are stale; {redo}",
            )
        )
    stamp_cells = [c for c in nb["cells"] if STAMP_TAG in c.get("metadata", {}).get("tags", [])]
    if len(stamp_cells) != 1:
        problems.append(Problem(path, f"should have exactly one cell tagged {STAMP_TAG!r}; {redo}"))
    else:
        shown = stamp_cells[0]["source"]
        shown = shown if isinstance(shown, str) else "".join(shown)
        if shown != stamp_cell_source(stamp):
            problems.append(Problem(path, f"the stamp line on the page does not match its metadata; {redo}"))
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        if cell.get("execution_count") is None:
            problems.append(Problem(path, f"code cell {i} was never executed; {redo}"))
            break
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            problems.append(Problem(path, f"code cell {i} has an error in its committed output; fix it, then {redo}"))
            break
    return problems


def check(paths: list[str | Path] | None = None, root: str | Path = ".") -> list[Problem]:
    """Check the given notebooks, or every notebook in ``_toc.yml``."""
    paths = [Path(p) for p in paths] if paths else toc_notebooks(root)
    problems: list[Problem] = []
    for p in paths:
        problems.extend(check_notebook(p))
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m resnorm.stamps",
        description="Check that executed notebooks carry a stamp that matches their code; list toc notebooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="fail if a notebook has no stamp or stale outputs")
    c.add_argument("notebooks", nargs="*", help="default: every notebook in _toc.yml")
    sub.add_parser("list", help="print the notebooks listed in _toc.yml")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(" ".join(str(p) for p in toc_notebooks()))
        return 0
    problems = check(args.notebooks)
    for p in problems:
        print(p)
    if not problems:
        print("all stamps fresh")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
