"""What a reader needs from every notebook of the book, checked without running it.

- Colab: the first code cell installs the companion package from the repository named in
  ``_config.yml`` (the one place the address is written) when it is not importable; every
  package a notebook imports is installed by ``requirements.txt``; GPU chapters tell the
  reader to pick a GPU runtime; requirements are lower bounds, never pins.
- The site: every figure has a caption and alt text (cell metadata ``mystnb``).
- Widgets: the executor runs widget cells and stores no widget state (see resnorm.execute).

Each failure message names the notebook and the cell, and says what to change.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from resnorm import stamps

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = stamps.toc_notebooks(ROOT)
IDS = [p.stem for p in NOTEBOOKS]

# Chapters that train or time models: they need a GPU for their full runs.
GPU_CHAPTERS = {"training", "experiments", "performance"}
# Imported under another name than the distribution that provides it, for packages that may
# not be installed where this test runs (installed ones are looked up in their metadata).
IMPORT_TO_DISTRIBUTION = {"sklearn": "scikit-learn", "PIL": "pillow", "yaml": "pyyaml", "cv2": "opencv-python"}
# Present in every Jupyter kernel, wherever the notebook runs.
KERNEL_MODULES = {"IPython", "ipykernel"}
IMAGE_MIMES = ("image/png", "image/svg+xml", "image/jpeg", "image/gif")
INSTALL_RE = re.compile(r"""^\s*%pip install\b[^\n]*["']resnorm @ git\+(?P<url>[^"'@#\s]+)""", re.MULTILINE)


# --------------------------------------------------------------------------- helpers


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _repo_url() -> str:
    return _config()["repository"]["url"].rstrip("/").removesuffix(".git")


def _nb(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    return cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])


def _code_cells(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _markdown(nb: dict) -> str:
    return "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.add(_normalize(match.group(0)))
    return names


def _pyproject_dependencies() -> set[str]:
    """The package's own dependencies, which ``-e .`` in requirements.txt installs."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies\s*=\s*\[(.*?)\]", text, flags=re.MULTILINE | re.DOTALL)
    return _requirement_names("\n".join(re.findall(r"[\"']([^\"']+)[\"']", block.group(1)))) if block else set()


def _installed_by_requirements() -> set[str]:
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    names = _requirement_names(requirements)
    if re.search(r"^\s*-e\s+\.\s*$", requirements, flags=re.MULTILINE):
        names |= _pyproject_dependencies() | {"resnorm"}
    return names


def _python_source(code: str) -> str | None:
    """The cell's code with IPython syntax made inert; None for a cell that is not Python (%%bash)."""
    lines = code.splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        if not re.match(r"\s*%%(time|timeit|capture|prun)\b", lines[0]):
            return None
        lines = lines[1:]
    out = []
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")) or re.match(r"[A-Za-z_][\w.]*\s*=\s*[!%]", stripped):
            out.append(line[: len(line) - len(stripped)] + "pass")  # keeps a try: body non-empty
        else:
            out.append(line)
    return "\n".join(out)


def _imports(code: str) -> set[str]:
    tree = ast.parse(code)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _distributions(module: str) -> list[str]:
    mapping = metadata.packages_distributions()
    if module in mapping:
        return [_normalize(d) for d in mapping[module]]
    if module in IMPORT_TO_DISTRIBUTION:
        return [_normalize(IMPORT_TO_DISTRIBUTION[module])]
    return [_normalize(module)]


# --------------------------------------------------------------------------- the book's settings


def test_repository_url_is_written_once_and_used_by_the_setup_cell_convention():
    config = _config()
    url = _repo_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), f"_config.yml repository.url {url!r} is not a GitHub repository URL"
    assert config["repository"].get("branch") == "main", "the launch buttons open notebooks from the main branch"
    assert config["launch_buttons"]["colab_url"].rstrip("/") == "https://colab.research.google.com"
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    documented = INSTALL_RE.findall(contributing)
    assert documented == [url], f"CONTRIBUTING.md's setup cell installs from {documented}, but _config.yml says {url}"


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-site.txt"])
def test_requirements_are_lower_bounds_not_pins(requirements):
    path = ROOT / requirements
    if not path.exists():
        pytest.skip(f"no {requirements}")
    # the version part only: an environment marker (after ";") may well say `sys_platform == "linux"`
    pinned = [line for line in path.read_text(encoding="utf-8").splitlines() if re.search(r"(===?|~=)", line.split("#", 1)[0].split(";", 1)[0])]
    assert not pinned, f"{requirements} pins exact versions (executable books rot that way; use >=): {pinned}"


def test_the_import_check_sees_what_a_notebook_imports():
    """The parser below must see imports inside try blocks and next to IPython magics."""
    cell = 'try:\n    import resnorm\nexcept ImportError:\n    %pip install -q "x"\n    import resnorm\nfrom sklearn.datasets import load_digits\nfiles = !ls\n'
    assert _imports(_python_source(cell)) == {"resnorm", "sklearn"}
    assert _python_source("%%bash\nls") is None
    assert _distributions("sklearn") == ["scikit-learn"]


# --------------------------------------------------------------------------- every notebook


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_setup_cell_installs_the_package_from_the_configured_repository(path):
    code = _code_cells(_nb(path))
    assert code, f"{path} has no code cell"
    index, first = code[0]
    source = _source(first)
    where = f"{path} (cell {index}, the first code cell)"
    urls = INSTALL_RE.findall(source)
    assert urls, f"{where} should be CONTRIBUTING.md's setup cell: it installs nothing with `%pip install \"resnorm @ git+URL\"`"
    assert urls == [_repo_url()], f"{where} installs from {urls}, but _config.yml repository.url is {_repo_url()}"
    tree = ast.parse(_python_source(source))
    guarded = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        and any(isinstance(s, ast.Import) and any(a.name == "resnorm" for a in s.names) for s in node.body)
        and any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError") for h in node.handlers)
    ]
    assert guarded, f"{where} must install only when `import resnorm` fails (try: import resnorm / except ImportError: %pip ...)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_import_is_installed_by_requirements(path):
    allowed = _installed_by_requirements()
    stdlib = set(sys.stdlib_module_names)
    missing = []
    for index, cell in _code_cells(_nb(path)):
        code = _python_source(_source(cell))
        if code is None:
            continue
        try:
            modules = _imports(code)
        except SyntaxError as exc:
            pytest.fail(f"{path} cell {index} is not valid Python: {exc}")
        for module in sorted(modules - stdlib - KERNEL_MODULES - {"resnorm"}):
            if not set(_distributions(module)) & allowed:
                missing.append(f"cell {index}: import {module} (distribution {_distributions(module)[0]})")
    assert not missing, (
        f"{path} imports packages that requirements.txt does not install (a reader's `make book` or Colab "
        f"would fail): {missing}; add a lower bound line for each to requirements.txt"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_gpu_chapters_tell_the_reader_to_pick_a_gpu_runtime(path):
    if path.stem not in GPU_CHAPTERS:
        pytest.skip("not a GPU chapter")
    nb = _nb(path)
    text = _markdown(nb)
    says_so = bool(re.search(r"GPU", text) and re.search(r"runtime type|GPU runtime", text, flags=re.IGNORECASE))
    assert says_so, (
        f"{path} trains or times models on a GPU: its markdown should tell Colab readers to pick a GPU runtime "
        "(e.g. 'On Colab, choose a GPU runtime first: Runtime -> Change runtime type')"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_every_figure_has_a_caption_and_alt_text(path):
    problems = []
    for index, cell in _code_cells(_nb(path)):
        if not any(mime in o.get("data", {}) for o in cell.get("outputs", []) for mime in IMAGE_MIMES):
            continue
        mystnb = cell.get("metadata", {}).get("mystnb", {})
        caption = (mystnb.get("figure") or {}).get("caption", "")
        alt = (mystnb.get("image") or {}).get("alt", "")
        if not str(caption).strip():
            problems.append(f"cell {index}: no mystnb.figure.caption")
        if not str(alt).strip():
            problems.append(f"cell {index}: no mystnb.image.alt")
    assert not problems, (
        f"{path}: figure cells need a caption and alt text in their metadata, "
        '{"mystnb": {"figure": {"caption": "...", "name": "fig-..."}, "image": {"alt": "..."}}}: ' + "; ".join(problems)
    )


# --------------------------------------------------------------------------- widgets


def test_executor_runs_widget_cells_and_stores_no_widget_state(make_notebook):
    """ipywidgets.interact prints into an Output widget; nbclient 0.11 crashes on that when it
    does not track widget state, so the executor tracks it and drops it before writing."""
    pytest.importorskip("ipywidgets")
    from resnorm import execute

    path = make_notebook(
        "from ipywidgets import interact\n"
        "def show(scale=1.0):\n    print('scale', scale)\n"
        "interact(show, scale=(0.0, 2.0, 0.5));"
    )
    execute.execute_notebook(path, "quick", timeout=120)
    nb = _nb(path)
    assert "widgets" not in nb["metadata"], "widget state should not be committed (the site would load a CDN widget manager)"
    outputs = [o for _, c in _code_cells(nb) for o in c["outputs"]]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    assert stamps.check_notebook(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_a_figure_cell_displays_only_its_figure(path):
    """myst-nb wraps *each* rich output of a cell with figure metadata in its own figure, with
    the same caption and label: a second display (a table, a Markdown line) gets the caption
    twice and a duplicate label, which fails the site build."""
    problems = []
    for index, cell in _code_cells(_nb(path)):
        if not (cell.get("metadata", {}).get("mystnb", {}) or {}).get("figure"):
            continue
        rich = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]
        if len(rich) > 1:
            kinds = [sorted(set(o.get("data", {})) - {"text/plain"}) or ["text/plain"] for o in rich]
            problems.append(f"cell {index} has {len(rich)} displayed outputs {kinds}")
    assert not problems, (
        f"{path}: a cell with mystnb.figure metadata should display only its figure (prints are fine); "
        f"move the other displays to their own cell: " + "; ".join(problems)
    )
