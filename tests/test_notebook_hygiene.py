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


# --------------------------------------------------------------------------- what a reader sees (issue 16)
# CONTRIBUTING.md items 10 to 13. The browser test (tests/site/test_site.py) checks the built pages;
# these check the notebooks themselves, so that `make test` names the notebook and the cell.

# A line of code or of printed output that fits the page's column at 1280 px (13 px monospace in a
# 720 px column, _static/resnorm.css); longer lines scroll sideways.
MAX_LINE = 88
# Drawn wider than this, a figure is shown scaled down (704 CSS px of the column = 7.33 in).
PAGE_FIGURE_WIDTH_IN = 704 / 96
CHAPTER_PARTS = ("Foundations", "The Transformer")
HIDDEN_INPUT_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
# Rich outputs that the page shows instead of their text/plain twin.
SHOWN_INSTEAD_OF_TEXT = ("text/html", "text/markdown", "text/latex", "application/vnd.jupyter.widget-view+json") + IMAGE_MIMES
FONT_SIZE_RE = re.compile(
    r"""(?:\b(?:fontsize|labelsize|titlesize|title_fontsize)\s*=\s*|["'](?:size|fontsize)["']\s*:\s*)"""
    r"""(?P<value>\d+(?:\.\d+)?|["'][\w-]+["'])"""
)
FIGSIZE_RE = re.compile(r"\bfigsize\s*=\s*\(\s*(?P<width>\d+(?:\.\d+)?)\s*,")
PIPE_TABLE_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
# Math written as plain text in a caption: 10^3, sqrt(d_k), d_k outside $...$ and `...`.
PLAIN_TEXT_MATH_RE = re.compile(r"\w\^[\w{(-]|\bsqrt\s*\(|√|\b[A-Za-z]_[A-Za-z0-9]{1,5}\b")


def _chapters() -> list[Path]:
    """The notebooks listed under the parts "Foundations" and "The Transformer" of _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    chapters = []
    for part in toc.get("parts", []):
        if part.get("caption") in CHAPTER_PARTS:
            for entry in part.get("chapters", []):
                path = ROOT / f"{entry['file']}.ipynb"
                if path.exists():
                    chapters.append(path)
    return chapters


CHAPTERS = _chapters()
CHAPTER_IDS = [p.stem for p in CHAPTERS]


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _content_cells(nb: dict) -> list[tuple[int, dict]]:
    """The cells after the title and the executor's stamp line."""
    cells = list(enumerate(nb["cells"]))
    if cells and cells[0][1]["cell_type"] == "markdown" and _source(cells[0][1]).lstrip().startswith("# "):
        cells = cells[1:]
    return [(i, c) for i, c in cells if stamps.STAMP_TAG not in _tags(c)]


def _text(output: dict, mime: str = "text/plain") -> str:
    if output.get("output_type") == "stream":
        value = output.get("text", "")
    else:
        value = output.get("data", {}).get(mime, "")
    return value if isinstance(value, str) else "".join(value)


def _exercises(nb: dict) -> list[tuple[int, dict]] | None:
    """The cells of the last `## ` section if it is `## Exercises`, else None."""
    start = None
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for line in _source(cell).splitlines():
            if line.startswith("## "):
                start = i if line.strip() == "## Exercises" else None
    return None if start is None else list(enumerate(nb["cells"]))[start:]


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_opens_with_what_it_teaches_and_assumes(path):
    cells = _content_cells(_nb(path))
    assert cells, f"{path} has nothing after its title"
    index, first = cells[0]
    text = _source(first) if first["cell_type"] == "markdown" else ""
    where = f"{path} (cell {index}, right under the title and the stamp)"
    assert text.lstrip().startswith(":::{admonition} In this chapter"), (
        f"{where} should open with the goals admonition (CONTRIBUTING.md item 10): "
        "':::{admonition} In this chapter' / ':class: chapter-goals' / **You will learn** ... / **You should know** ... / ':::'"
    )
    for needed in (":class: chapter-goals", "**You will learn**", "**You should know**"):
        assert needed in text, f"{where}: the goals admonition lacks {needed!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_ends_with_exercises(path):
    nb = _nb(path)
    section = _exercises(nb)
    assert section is not None, f"{path}: the last section should be '## Exercises' (CONTRIBUTING.md item 10)"
    markdown = "\n".join(_source(c) for _, c in section if c["cell_type"] == "markdown")
    code = [(i, c) for i, c in section if c["cell_type"] == "code"]
    assert re.search(r"^\s*1\.\s", markdown, flags=re.MULTILINE), f"{path}: number the exercises (1., 2., ...)"
    assert ":::{dropdown} Hint" in markdown, f"{path}: give at least one hint in a ':::{{dropdown}} Hint' block"
    assert code, f"{path}: at least one exercise should be runnable (a code cell in the Exercises section)"
    assert any("solution" in _tags(c) for _, c in code), f"{path}: at least one solution cell (tags solution, hide-cell)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_solution_cells_are_hidden(path):
    shown = [i for i, c in enumerate(_nb(path)["cells"]) if "solution" in _tags(c) and "hide-cell" not in _tags(c)]
    assert not shown, f"{path}: solution cells {shown} should also be tagged hide-cell (hidden until the reader asks)"


def _only_imports(code: str) -> bool:
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and all(isinstance(node, (ast.Import, ast.ImportFrom)) for node in body)


def _only_formats_a_table(cell: dict) -> bool:
    """A cell that shows a Markdown table and nothing else, and asserts nothing."""
    shown = [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result", "stream")]
    tables = [o for o in shown if PIPE_TABLE_RE.search(_text(o, "text/markdown"))]
    return bool(tables) and len(tables) == len(shown) and not re.search(r"^\s*assert\b", _source(cell), re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_boilerplate_input_is_hidden(path):
    problems = []
    for n, (index, cell) in enumerate(_code_cells(_nb(path))):
        code = _python_source(_source(cell)) or ""
        why = ("the setup cell" if n == 0 else "an imports-only cell" if _only_imports(code)
               else "a cell that only formats a table" if _only_formats_a_table(cell) else None)
        if why and not _tags(cell) & HIDDEN_INPUT_TAGS:
            problems.append(f"cell {index} ({why})")
    assert not problems, f"{path}: tag these cells hide-input (CONTRIBUTING.md item 11): {problems}"


# A quotation keeps its lines. A code cell tagged `verbatim` holds an article's code (or printed
# output) quoted as printed, in a string literal assigned to a name (A1_BLOCK = r'''...'''), which
# the cell then runs or reads; rewrapping it would misquote the article. Its long lines are shown in
# a box that scrolls sideways with a visible cue (_static/resnorm.js), which tests/site/test_site.py
# checks on the built page. The exemption is narrow: it covers only the lines of those literals (the
# cell's own code around them must fit like any other), and only in a cell whose first line is a
# comment naming the article it quotes (A1 to A5). An untagged cell gets no exemption at all.
VERBATIM_TAG = "verbatim"
NAMES_AN_ARTICLE_RE = re.compile(r"^#.*\bA[1-5]\b")


def _quotations(source: str) -> list[ast.Constant]:
    """The string literals that the cell assigns, at its top level, to a name: NAME = r'''...'''."""
    try:
        body = ast.parse(_python_source(source) or "").body
    except SyntaxError:
        return []
    return [node.value for node in body
            if isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)]


def _verbatim_problem(cell: dict) -> str | None:
    """Why a cell tagged verbatim is not a quotation of an article, or None if it is one."""
    source = _source(cell)
    first = source.splitlines()[0] if source.strip() else ""
    if not NAMES_AN_ARTICLE_RE.match(first):
        return ("its first line should be a comment naming the article it quotes (A1 to A5), "
                f"not {first[:50]!r}")
    if not _quotations(source):
        return "it assigns no string literal (NAME = r'''...'''): there is no quotation to keep as printed"
    return None


def _long_code_lines(cell: dict) -> list[str]:
    """Lines longer than MAX_LINE, leaving out the quoted lines of a valid verbatim cell."""
    source = _source(cell)
    quoted: set[int] = set()
    if VERBATIM_TAG in _tags(cell) and _verbatim_problem(cell) is None:
        for literal in _quotations(source):
            quoted |= set(range(literal.lineno, literal.end_lineno + 1))
    return [f"line {k}: {len(line)} characters" for k, line in enumerate(source.splitlines(), 1)
            if len(line) > MAX_LINE and k not in quoted]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_code_lines_fit_the_column(path):
    long = []
    for n, (index, cell) in enumerate(_code_cells(_nb(path))):
        if n == 0:
            continue  # the setup cell: its text is fixed by CONTRIBUTING.md item 2, and it is hidden
        long += [f"cell {index} {problem}" for problem in _long_code_lines(cell)]
    assert not long, (
        f"{path}: code lines longer than {MAX_LINE} characters scroll sideways on the page: {long} "
        f"(an article's code quoted as printed goes in a string literal in a cell tagged {VERBATIM_TAG!r})"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_verbatim_cells_quote_an_article(path):
    problems = [f"cell {index}: {why}" for index, cell in enumerate(_nb(path)["cells"])
                if VERBATIM_TAG in _tags(cell) and (why := "a markdown cell" if cell["cell_type"] != "code"
                                                    else _verbatim_problem(cell))]
    assert not problems, f"{path}: cells tagged {VERBATIM_TAG!r} must be quotations of an article: {problems}"


def test_only_quoted_lines_of_a_verbatim_cell_may_be_long():
    long_line = "x = " + "1 + " * 30 + "1"
    quoted = f"# A2 §5.2, as printed\nA2_BLOCK = r'''\n{long_line}\n'''\nprint(len(A2_BLOCK))\n"

    def cell(source, *tags):
        return {"cell_type": "code", "source": source, "metadata": {"tags": list(tags)}}

    assert len(long_line) > MAX_LINE
    assert _long_code_lines(cell(long_line)) == [f"line 1: {len(long_line)} characters"]
    assert _long_code_lines(cell(long_line, VERBATIM_TAG)), "a verbatim tag on code that quotes nothing exempts nothing"
    assert _long_code_lines(cell(quoted)), "without the tag, a quotation's long lines count"
    assert _long_code_lines(cell(quoted, VERBATIM_TAG)) == []
    assert _verbatim_problem(cell(quoted, VERBATIM_TAG)) is None
    # the cell's own code next to the quotation must still fit
    mixed = quoted + f"print({long_line!r})\n"
    assert _long_code_lines(cell(mixed, VERBATIM_TAG)) == [f"line 6: {len(mixed.splitlines()[5])} characters"]
    # a quotation must say which article it comes from, in its first line
    unnamed = quoted.replace("# A2 §5.2, as printed", "# some code")
    assert "A1 to A5" in _verbatim_problem(cell(unnamed, VERBATIM_TAG))
    assert _long_code_lines(cell(unnamed, VERBATIM_TAG)), "an unnamed quotation is not exempt"
    assert "no string literal" in _verbatim_problem(cell(f"# A2 §5.2\n{long_line}\n", VERBATIM_TAG))


def _long_printed_lines(cell: dict) -> list[str]:
    """Printed (plain-text) output lines of a cell wider than the column."""
    long = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            continue  # the stale check (tests/test_stamps.py) refuses errors
        if output.get("output_type") != "stream" and any(m in output.get("data", {}) for m in SHOWN_INSTEAD_OF_TEXT):
            continue
        long += [line for line in _text(output).splitlines() if len(line) > MAX_LINE]
    return long


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_printed_output_fits_the_column(path):
    long = []
    for index, cell in _code_cells(_nb(path)):
        if WIDE_OUTPUT_TAG in cell.get("metadata", {}).get("tags", []):
            continue  # a GPU run's output, shown in a box that scrolls with a cue (see below)
        long += [f"cell {index}: {len(line)} characters: {line[:50]!r}..." for line in _long_printed_lines(cell)]
    assert not long, (
        f"{path}: printed lines longer than {MAX_LINE} characters scroll sideways on the page "
        f"(print fewer or narrower columns, or display a Markdown table): {long[:8]}"
    )


# Printed output of a GPU run cannot be re-made without a GPU: where such a run printed lines
# wider than the column, the cell is tagged `wide-output` and the page scrolls the output box
# sideways with a visible cue (tests/site/test_site.py checks the cue). The tag is allowed only
# in notebooks whose committed outputs come from a full-mode (GPU) run; a CPU notebook is cheap
# to re-execute, so its output must be narrowed instead.
WIDE_OUTPUT_TAG = "wide-output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_wide_output_only_for_gpu_runs(path):
    nb = _nb(path)
    tagged = [index for index, cell in _code_cells(nb) if WIDE_OUTPUT_TAG in cell.get("metadata", {}).get("tags", [])]
    if not tagged:
        return
    stamp = stamps.get_stamp(nb) or {}
    assert stamp.get("mode") == "full" and stamp.get("device_type") == "cuda", (
        f"{path}: cells {tagged} are tagged {WIDE_OUTPUT_TAG!r}, which only a GPU run's outputs may be; "
        "re-execute this notebook with narrower printed lines instead"
    )
    narrow = [i for i in tagged if not _long_printed_lines(nb["cells"][i])]
    assert not narrow, f"{path}: cells {narrow} are tagged {WIDE_OUTPUT_TAG!r} but print nothing wider than {MAX_LINE}"


def _font_points(value: str) -> float:
    from matplotlib import font_manager

    from resnorm import plotting

    value = value.strip("'\"")
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    return font_manager.font_scalings.get(value, 1.0) * float(plotting.STYLE["font.size"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_figures_are_drawn_at_the_column_width_with_readable_text(path):
    """The code asks for no text below 9 pt and no figure wider than the column; the committed
    PNGs are at least 150 dpi and at most as wide as the page shows them (else they are shrunk)."""
    import base64
    import struct

    from resnorm import plotting

    problems = []
    for index, cell in _code_cells(_nb(path)):
        code = _source(cell)
        for match in FONT_SIZE_RE.finditer(code):
            if _font_points(match.group("value")) < plotting.MIN_FONT_PT:
                problems.append(f"cell {index}: {match.group(0)!r} is below {plotting.MIN_FONT_PT:g} pt")
        for match in FIGSIZE_RE.finditer(code):
            if float(match.group("width")) > plotting.COLUMN_WIDTH_IN:
                problems.append(f"cell {index}: {match.group(0)!r}... is wider than the column "
                                f"({plotting.COLUMN_WIDTH_IN:g} in): use plotting.figsize(height) or plotting.panels(...)")
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if not png:
                continue
            data = base64.b64decode(png if isinstance(png, str) else "".join(png))
            width = struct.unpack(">I", data[16:20])[0]
            dpi = _png_dpi(data)
            if dpi is None or dpi < 149.5:
                problems.append(f"cell {index}: PNG at {dpi or 0:.0f} dpi (the style saves at 150: call plotting.use_style())")
            elif width / dpi > PAGE_FIGURE_WIDTH_IN:
                problems.append(f"cell {index}: PNG drawn {width / dpi:.2f} in wide, shown at most {PAGE_FIGURE_WIDTH_IN:.2f} in "
                                f"(text shrinks to {plotting.MIN_FONT_PT * PAGE_FIGURE_WIDTH_IN / (width / dpi):.1f} pt)")
    assert not problems, f"{path}: figures that the page would show too small (CONTRIBUTING.md item 13): {problems}"


def _png_dpi(data: bytes) -> float | None:
    from resnorm import plotting

    return plotting.png_dpi(data)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_caption_math_is_written_in_mathjax(path):
    problems = []
    for index, cell in _code_cells(_nb(path)):
        caption = str(((cell.get("metadata", {}).get("mystnb", {}) or {}).get("figure") or {}).get("caption", ""))
        prose = re.sub(r"\$[^$]*\$|`[^`]*`", " ", caption)  # math and code are fine
        found = PLAIN_TEXT_MATH_RE.findall(prose)
        if found:
            problems.append(f"cell {index}: {found}")
    assert not problems, f"{path}: captions with math as plain text; write it as $...$ (e.g. $10^3$, $\\sqrt{{d_k}}$): {problems}"


def test_the_reader_checks_can_fail():
    """The patterns above catch what they are meant to catch (and leave the rest alone)."""
    assert _only_imports("import math\nfrom torch import nn") and not _only_imports("import math\nx = 1")
    assert PIPE_TABLE_RE.search("| a | b |\n|---|---|\n| 1 | 2 |") and not PIPE_TABLE_RE.search("a | b")
    assert [m.group("value") for m in FONT_SIZE_RE.finditer('ax.text(0, 0, "a", fontsize=7); prop={"size": 8}')] == ["7", "8"]
    assert _font_points("'x-small'") < 9 <= _font_points("9")
    assert FIGSIZE_RE.search("plt.subplots(1, 2, figsize=(9.6, 3.6))").group("width") == "9.6"
    assert PLAIN_TEXT_MATH_RE.search("grows like 10^3 and sqrt(d_k)")
    assert not PLAIN_TEXT_MATH_RE.search(re.sub(r"\$[^$]*\$|`[^`]*`", " ", "like $10^3$ and `d_model`, $\\sqrt{d_k}$"))
