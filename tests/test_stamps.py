import json

import nbformat
import pytest

from resnorm import execute, stamps


def _edit_first_code_cell(path, new_source):
    nb = nbformat.read(path, as_version=4)
    next(c for c in nb.cells if c.cell_type == "code").source = new_source
    nbformat.write(nb, path)


def test_stale_check_fails_after_a_code_edit_and_passes_after_re_execution(make_notebook):
    path = make_notebook("x = 1\nx")
    execute.execute_notebook(path, "quick")
    assert stamps.check([path]) == []

    _edit_first_code_cell(path, "x = 2\nx")
    problems = stamps.check([path])
    assert len(problems) == 1
    message = str(problems[0])
    assert str(path) in message and "stale" in message and "python -m resnorm.execute" in message

    execute.execute_notebook(path, "quick")
    assert stamps.check([path]) == []


def test_markdown_edits_do_not_make_outputs_stale(make_notebook):
    path = make_notebook("1")
    execute.execute_notebook(path, "quick")
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell("more prose"))
    nbformat.write(nb, path)
    assert stamps.check([path]) == []


def test_unstamped_notebook_is_reported(make_notebook):
    path = make_notebook("1")
    problems = stamps.check([path])
    assert len(problems) == 1 and "no execution stamp" in str(problems[0])


def test_a_hand_edited_stamp_line_is_reported(make_notebook):
    path = make_notebook("1")
    execute.execute_notebook(path, "quick")
    nb = json.loads(path.read_text())
    nb["cells"][1]["source"] = "".join(nb["cells"][1]["source"]).replace("CPU", "NVIDIA H100")
    path.write_text(json.dumps(nb))
    assert any("does not match" in str(p) for p in stamps.check([path]))


def test_code_hash_sees_code_and_ignores_outputs():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1"), nbformat.v4.new_code_cell("b = 2")])
    h = stamps.code_hash(nb)
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="hello")]
    assert stamps.code_hash(nb) == h
    nb.cells[1].source = "b = 3"
    assert stamps.code_hash(nb) != h
    # moving a line across a cell boundary is a change too
    moved = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1\nb = 2"), nbformat.v4.new_code_cell("")])
    assert stamps.code_hash(moved) != h


@pytest.mark.parametrize("seconds, text", [(8.24, "8.2 s"), (192.4, "3 min 12 s"), (3725, "1 h 2 min")])
def test_durations_read_naturally(seconds, text):
    assert stamps.format_duration(seconds) == text


def test_toc_lists_only_pages_that_exist(repo_root):
    files = stamps.toc_files(repo_root)
    assert files and all(f.exists() for f in files)


def test_toc_with_a_missing_page_is_an_error(tmp_path):
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: intro\nchapters:\n  - file: missing\n")
    (tmp_path / "intro.md").write_text("# Intro\n")
    with pytest.raises(FileNotFoundError, match="missing"):
        stamps.toc_files(tmp_path)


def test_every_committed_notebook_in_the_toc_is_stamped_and_fresh(repo_root):
    """The guard on the book itself: a code edit without re-execution fails `make test` here."""
    problems = stamps.check(root=repo_root) if stamps.toc_notebooks(repo_root) else []
    assert not problems, "stale or unstamped notebooks:\n" + "\n".join(str(p) for p in problems)
