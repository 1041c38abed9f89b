import json

import nbformat
import pytest

from resnorm import execute, stamps


def test_executor_writes_outputs_and_a_correct_stamp(make_notebook):
    path = make_notebook("import os\nprint(os.environ['RESNORM_MODE'])", "6 * 7")
    stamp = execute.execute_notebook(path, "quick")
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "".join(code[0]["outputs"][0]["text"]).strip() == "quick"  # the kernel saw the mode
    assert "".join(code[1]["outputs"][0]["data"]["text/plain"]) == "42"
    assert [c["execution_count"] for c in code] == [1, 2]
    saved = nb["metadata"]["resnorm"]["stamp"]
    assert saved == stamp
    assert saved["mode"] == "quick"
    assert saved["code_sha256"] == stamps.code_hash(nb)
    assert saved["device"].startswith(("CPU", "NVIDIA", "Apple"))
    assert saved["wall_s"] >= 0 and saved["torch"]
    # the visible stamp sits right under the title
    assert "".join(nb["cells"][0]["source"]) == "# A title"
    assert stamps.STAMP_TAG in nb["cells"][1]["metadata"]["tags"]
    assert "quick mode" in "".join(nb["cells"][1]["source"])
    assert stamps.check_notebook(path) == []
    # seconds per code cell, for sizing a page's plan; nbclient's own timestamps are not kept
    timings = nb["metadata"]["resnorm"]["cell_wall_s"]
    assert len(timings) == 2 and all(t is not None and 0 <= t < saved["wall_s"] + 1 for t in timings)
    assert all("execution" not in c["metadata"] for c in code)
    assert execute.slowest_cells(path, count=1).startswith("code cell ")


def test_re_execution_replaces_the_stamp_instead_of_adding_one(make_notebook):
    path = make_notebook("1 + 1")
    execute.execute_notebook(path, "quick")
    execute.execute_notebook(path, "cpu")
    nb = json.loads(path.read_text())
    tagged = [c for c in nb["cells"] if stamps.STAMP_TAG in c["metadata"].get("tags", [])]
    assert len(tagged) == 1 and "cpu mode" in "".join(tagged[0]["source"])
    assert nb["metadata"]["resnorm"]["stamp"]["mode"] == "cpu"


def test_a_failing_cell_fails_and_leaves_the_file_alone(make_notebook):
    path = make_notebook("raise RuntimeError('boom')")
    before = path.read_text()
    with pytest.raises(Exception, match="boom"):
        execute.execute_notebook(path, "quick")
    assert path.read_text() == before


def test_full_mode_refuses_to_stamp_a_cpu_run(make_notebook, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = make_notebook("1")
    with pytest.raises(SystemExit, match="no CUDA device"):
        execute.execute_notebook(path, "full")


def test_command_line_reports_failure_with_exit_code(make_notebook, capsys):
    good = make_notebook("2 + 2", name="good.ipynb")
    bad = make_notebook("1 / 0", name="bad.ipynb")
    assert execute.main(["--mode", "quick", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "bad.ipynb" in err and "ZeroDivisionError" in err
    assert stamps.get_stamp(nbformat.read(good, as_version=4)) is not None


def test_gpu_chapters_exist_are_in_the_toc_and_fit_ten_minutes():
    toc = {p.as_posix() for p in stamps.toc_notebooks()}
    assert set(execute.GPU_CHAPTERS) <= toc
    assert sum(execute.GPU_CHAPTERS.values()) <= 600  # `make gpu`: at most 10 minutes on one H100
    assert list(execute.GPU_CHAPTERS)[0] == "book/training.ipynb"  # the most important run first


def test_gpu_chapters_refuse_other_modes_and_a_cpu_run(monkeypatch):
    with pytest.raises(SystemExit):
        execute.main(["--gpu-chapters", "--mode", "cpu"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="full mode is for a GPU"):
            execute.main(["--gpu-chapters"])
