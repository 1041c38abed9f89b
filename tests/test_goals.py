import pytest

from resnorm import goals


def test_line_met_and_missed(capsys):
    g = goals.check("exact_match_test", 0.9993, ">=", 0.999, fmt="%")
    assert g.met is True
    assert capsys.readouterr().out.strip() == "GOAL exact_match_test: 99.93% (target >= 99.90%) met"
    g = goals.check("step_ratio", 0.65, ">=", 1.0, fmt="x", show=False)
    assert g.line() == "GOAL step_ratio: 0.65x (target >= 1.00x) missed"


def test_compares_numbers_not_rounded_text():
    # 0.998999 prints as 99.90% but misses 99.9%
    g = goals.check("em", 0.998999, ">=", 0.999, fmt="%", show=False)
    assert "99.90%" in g.line() and g.verdict == "missed"


def test_not_measured_and_parse():
    g = goals.check("gpu_only", None, "<=", 60, fmt="s", show=False)
    assert g.verdict == "not measured" and "GOAL gpu_only: - (target <= 60.0 s) not measured" == g.line()
    text = "\n".join([g.line(), goals.check("a", 2, "<", 3, show=False).line() + "  [note]", "other"])
    parsed = goals.parse(text)
    assert [p["name"] for p in parsed] == ["gpu_only", "a"]
    assert [p["verdict"] for p in parsed] == ["not measured", "met"]
    assert goals.summary([g, goals.check("a", 2, "<", 3, show=False)]) == "1 of 2 goals met (0 missed, 1 not measured)"


@pytest.mark.parametrize("name,op", [("has space", ">="), ("ok", "=="), ("ok", "~")])
def test_bad_input_is_refused(name, op):
    with pytest.raises(ValueError):
        goals.Goal(name, 1.0, op, 1.0)
