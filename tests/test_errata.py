"""Consistency checks for the errata chapter, its glossary, the source-code notebook and the bibliography,
and computations that the errata state as numbers.

The build catches a broken link only when it runs; these checks run in seconds and say
which entry is wrong.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CATEGORIES = {
    "wrong fact",
    "misleading",
    "wrong formula",
    "broken code",
    "wrong or invented citation",
    "wrong history",
    "fabricated output",
    "empty filler",
}
SEVERITIES = ("key", "major", "minor")
KEY_ERRORS = {"N2", "N10", "T1"}  # Post-LN vs Pre-LN, the normalization axis, the attention scale
FIELDS = ("**Where:**", "**Quote:**", "**Category:**", "**Severity:**", "**What is true:**", "**Shown in:**")
ARTICLES = ("A1", "A2", "A3", "A4", "A5")
# Pages this file checks for links, glosses and names.
OWN_PAGES = ("errata.md", "errata_ledger.md", "glossary.md", "intro.md")
NOTHING_TO_RUN = "nothing to run"


def read(name: str) -> str:
    return (BOOK / name).read_text(encoding="utf-8")


def bib_keys() -> list[str]:
    return re.findall(r"^@\w+\{([^,\s]+),", read("references.bib"), flags=re.M)


def bib_entries() -> dict[str, str]:
    entries = re.split(r"^@", read("references.bib"), flags=re.M)[1:]
    return {e.split("{", 1)[1].split(",", 1)[0]: e for e in entries}


def cited_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::[pt])?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def errata_entries() -> dict[str, str]:
    """Entry id (R1, N3, ...) -> the text of the entry."""
    text = read("errata.md")
    parts = re.split(r"^### ([RNTCHX]\d+) ", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0].split("\n(errata-")[0] for i in range(1, len(parts), 2)}


def field(body: str, name: str) -> str:
    return body.split(f"**{name}:**", 1)[1].split("\n", 1)[0]


def labels_in(text: str) -> set[str]:
    return set(re.findall(r"^\(([\w-]+)\)=\s*$", text, flags=re.M))


def notebook_markdown(name: str) -> str:
    nb = json.loads(read(name))
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def slug(title: str) -> str:
    """The anchor MyST gives a heading (myst_heading_anchors), as myst_parser's default_slugify computes it:
    from the heading's text and inline code only (math is left out), lower case, spaces to '-', then
    everything but word characters, CJK and '-' dropped."""
    text = re.sub(r"\$[^$]*\$", "", title.strip()).replace("`", "")
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", text.lower().replace(" ", "-"))


def heading_anchors(page: str, depth: int = 3) -> set[str]:
    path = BOOK / page
    text = notebook_markdown(page) if path.suffix == ".ipynb" else path.read_text(encoding="utf-8")
    return {slug(h) for h in re.findall(rf"^#{{1,{depth}}} (.+)$", text, flags=re.M)}


def test_the_slug_is_mysts():
    assert slug("Why divide by $\\sqrt{d_k}$") == "why-divide-by-"
    assert slug("The invariance table of Ba, Kiros & Hinton (2016)") == "the-invariance-table-of-ba-kiros--hinton-2016"
    assert slug("A worked example: 我 爱 中国") == "a-worked-example-我-爱-中国"


def toc_pages() -> set[str]:
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    return {Path(p).name for p in re.findall(r"^\s*-?\s*(?:root|file):\s*(\S+)\s*$", toc, flags=re.M)}


# --------------------------------------------------------------------------- bibliography


def test_bibliography_keys_are_unique_and_complete():
    keys = bib_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"duplicate keys in references.bib: {duplicates}"
    for key, entry in bib_entries().items():
        for name in ("author", "title", "year"):
            assert re.search(rf"^\s*{name}\s*=", entry, flags=re.M), f"{key} has no {name}"
        has_identifier = re.search(r"^\s*(eprint|doi|isbn|url)\s*=", entry, flags=re.M)
        citable = "publisher" in entry or "institution" in entry or ("journal" in entry and "pages" in entry)
        assert has_identifier or citable, f"{key} has no arXiv id, DOI, ISBN, publisher, institution or journal pages"


def test_neurips_is_named_as_it_was_in_its_year():
    """The conference was NIPS until 2017 and NeurIPS from 2018 on."""
    for key, entry in bib_entries().items():
        venue = re.search(r"booktitle\s*=\s*\{(.*)\},?\s*$", entry, flags=re.M)
        if not venue or "Neural Information Processing Systems" not in venue.group(1):
            continue
        year = int(re.search(r"year\s*=\s*\{(\d{4})\}", entry).group(1))
        expected, other = ("NIPS", "NeurIPS") if year <= 2017 else ("NeurIPS", "NIPS ")
        assert f"{expected} {year}" in venue.group(1) and other not in venue.group(1), f"{key}: {venue.group(1)!r} in {year}"


def test_published_versions_are_cited_not_only_preprints():
    entries = bib_entries()
    assert "CVPR" in entries["zhu2025transformers"] and "arXiv preprint" not in entries["zhu2025transformers"]
    assert "Pattern Analysis and Machine Intelligence" in entries["wang2022deepnet"]
    assert "10.1109/TPAMI.2024.3386927" in entries["wang2022deepnet"]


@pytest.mark.parametrize("page", ["errata.md", "errata_ledger.md", "glossary.md", "intro.md"])
def test_every_citation_is_in_the_bibliography(page):
    missing = cited_keys(read(page)) - set(bib_keys())
    assert not missing, f"{page} cites keys missing from references.bib: {sorted(missing)}"


# --------------------------------------------------------------------------- the entries


def test_every_errata_entry_is_complete_and_anchored():
    entries = errata_entries()
    assert len(entries) >= 60, f"expected the full errata, found {len(entries)} entries"
    labels = labels_in(read("errata.md"))
    for entry_id, body in entries.items():
        assert f"errata-{entry_id.lower()}" in labels, f"errata entry {entry_id} has no anchor (errata-{entry_id.lower()})="
        for name in FIELDS:
            assert name in body, f"errata entry {entry_id} has no {name}"
        category = field(body, "Category")
        assert {c for c in CATEGORIES if c in category}, f"errata entry {entry_id}: category {category.strip()!r} is none of {sorted(CATEGORIES)}"
        severity = field(body, "Severity").strip().rstrip(".")
        assert severity in SEVERITIES, f"errata entry {entry_id}: severity {severity!r}"
        assert (severity == "key") == (entry_id in KEY_ERRORS), f"errata entry {entry_id}: severity {severity}"
        shown = field(body, "Shown in")
        linked = "{doc}" in shown or "{ref}" in shown or re.search(r"\]\([\w.-]+\.(ipynb|md)", shown)
        assert linked or NOTHING_TO_RUN in shown, f"errata entry {entry_id} links to no page of the book"
        where = field(body, "Where")
        assert any(re.search(rf"\b{a}\b", where) for a in ARTICLES), f"errata entry {entry_id} names no article in Where"


def _index_rows(heading: str) -> dict[str, list[str]]:
    text = read("errata.md").split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for name, cell in re.findall(r"^\| ([\w ()0-9]+?) \| (.+) \|$", text, flags=re.M):
        rows[name.split(" (")[0]] = re.findall(r"<errata-([a-z]+\d+)>", cell)
    return rows


def test_the_index_by_article_lists_every_entry_that_names_the_article():
    rows = _index_rows("Index by article")
    for a in ARTICLES:
        expected = [k.lower() for k, body in errata_entries().items() if re.search(rf"\b{a}\b", field(body, "Where"))]
        assert rows.get(a) == expected, f"index row {a}: {rows.get(a)} but the entries naming {a} are {expected}"


def test_the_index_by_severity_lists_every_entry_once():
    rows = _index_rows("Index by severity")
    for severity in SEVERITIES:
        expected = [k.lower() for k, body in errata_entries().items() if field(body, "Severity").strip().rstrip(".") == severity]
        assert rows.get(severity) == expected, f"index row {severity}: {rows.get(severity)}, expected {expected}"


def test_no_entry_is_left_unchecked():
    text = read("errata.md")
    for phrase in ("not checked further", "have not checked", "not been checked"):
        assert phrase not in text, f"errata.md still says {phrase!r}: give the claim a verdict with a source"


# --------------------------------------------------------------------------- links


def test_every_reference_target_exists():
    labels = set()
    for notebook in sorted((BOOK).glob("*.ipynb")):  # every chapter may define section labels
        labels |= labels_in(notebook_markdown(notebook.name))
    for page in ("errata.md", "errata_ledger.md", "glossary.md", "intro.md"):
        labels |= labels_in(read(page))
    for page in OWN_PAGES:
        targets = re.findall(r"\{ref\}`[^`<]*<([\w-]+)>`", read(page)) + re.findall(r"\{ref\}`([\w-]+)`", read(page))
        missing = sorted(set(targets) - labels)
        assert not missing, f"{page} refers to labels that are not defined: {missing}"


def test_every_linked_page_is_in_the_table_of_contents():
    listed = toc_pages()
    for page in OWN_PAGES:
        text = read(page)
        docs = set(re.findall(r"\{doc\}`(?:[^`<]*<)?([\w/.-]+?)>?`", text))
        docs |= {Path(p).stem for p in re.findall(r"\]\(([\w-]+\.(?:ipynb|md))(?:#[^)]*)?\)", text)}
        missing = sorted(d for d in docs if d not in {Path(p).stem for p in listed} and d not in listed)
        assert not missing, f"{page} links to pages missing from _toc.yml: {missing}"


def test_every_section_link_names_a_heading_the_page_has():
    """[text](page.ipynb#anchor): the anchor must be that of a heading of level 1-3 (myst_heading_anchors: 3)."""
    found = 0
    for page in OWN_PAGES:
        for target, anchor in re.findall(r"\]\(([\w-]+\.(?:ipynb|md))#([^)\s]+)\)", read(page)):
            found += 1
            assert anchor in heading_anchors(target), f"{page} links to {target}#{anchor}, a heading that page does not have"
    assert found >= 20, "expected the errata to link to sections by their anchors"


def test_the_chapters_being_rewritten_are_linked_as_pages_not_by_section_names():
    """training, experiments and performance get {ref} labels from their rewrite; until then, page links only."""
    for page in OWN_PAGES:
        text = read(page)
        assert not re.search(r"\((training|experiments|performance)\.ipynb#", text), f"{page} links into a section of a chapter being rewritten"
        assert not re.search(r"\{doc\}`(training|experiments|performance)`,? sections? \"", text), f"{page} names a section of a chapter being rewritten"


# --------------------------------------------------------------------------- names, paths and glosses


def test_the_articles_are_called_a1_to_a5():
    table = read("errata.md").split("## The five articles", 1)[1].split("\n## ", 1)[0]
    for a in ARTICLES:
        assert re.search(rf"^\| \{{ref\}}`{a} <ledger-{a.lower()}>` \|", table, flags=re.M), f"the article table has no linked row for {a}"
    for page in OWN_PAGES:
        text = read(page)
        assert not re.search(r"\b(article|seed)s? 00\d", text, flags=re.I), f"{page} names an article by its file number"
    md = notebook_markdown("source_code.ipynb")
    assert not re.search(r"\b(article|seed)s? 00\d", md, flags=re.I)


def test_no_page_points_to_files_the_book_does_not_ship():
    for page in OWN_PAGES:
        text = read(page)
        assert "shared/seeds" not in text and not re.search(r"\b00\d_[0-9a-f]{16}\.txt", text), f"{page} points to the unshipped articles"


def _unglossed(text: str) -> list[str]:
    """Chinese with no English next to it: a quote 「…」 not followed by a quoted gloss, or bare Chinese
    outside quotes not followed by a parenthesis. Link targets are skipped."""
    text = re.sub(r"\]\([^)]*\)", "]()", text)
    text = re.sub(r"`[^`\n]*`", "``", text)  # code and formulas quoted as code
    problems = []
    for m in re.finditer(r"「([^」]*)」", text):
        if not re.search(r"[\u4e00-\u9fff]", m.group(1)):
            continue
        after = text[m.end() : m.end() + 120]
        after = re.sub(r"^\s*\((?:A\d|item|§)[^)]*\)", "", after)  # a place, such as (A2 §3.1)
        if re.match(r"\s*(?:,\s*|and\s+|or\s+)?「", after) or re.match(r'\s*,?\s*\(?"', after) or re.match(r"\s*:\s+\S", after):
            continue
        problems.append(f"{m.group(0)[:40]} -> {after[:40]!r}")
    bare = re.sub(r"「[^」]*」", lambda m: " " * len(m.group(0)), text)
    for m in re.finditer(r"[\u4e00-\u9fff][\u4e00-\u9fff0-9–、：]*(?: [\u4e00-\u9fff]+)*", bare):
        if not re.match(r"\s*\(", bare[m.end() :]):
            problems.append(f"{m.group(0)} -> {bare[m.end() : m.end() + 40]!r}")
    return problems


@pytest.mark.parametrize("page", ["errata.md", "errata_ledger.md", "intro.md"])
def test_every_chinese_quote_and_label_has_an_english_gloss(page):
    problems = _unglossed(read(page))
    assert not problems, f"{page}: Chinese without an English gloss: {problems[:10]}"


def test_the_gloss_check_can_fail():
    assert _unglossed("「层规范化」 is used") and _unglossed("A1 §3.3 缺点 1")
    assert not _unglossed('「层规范化」 (A1 §2.1), "layer normalization"; A1 §3.3 缺点 ("drawbacks")')


def test_the_section_labels_are_in_the_glossary():
    glossary = read("glossary.md")
    labels = set(re.findall(r"([\u4e00-\u9fff]+) \(\"?[a-z]", read("errata.md")))
    for label in ("缺点", "优点", "答案", "解析", "结论", "摘要", "引言", "案例分析", "常见问题与解答"):
        assert label in labels or label in glossary, label
        assert label in glossary, f"section label {label} is not in the glossary"


# --------------------------------------------------------------------------- the numbers the errata state


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_n13_the_share_of_layernorm_in_a_base_encoder_layer():
    layer = nn.TransformerEncoderLayer(d_model=512, nhead=8, dim_feedforward=2048)
    total, one = n_params(layer), n_params(layer.norm1)
    assert (total, one, n_params(layer.norm2)) == (3_152_384, 1_024, 1_024)
    assert round(100 * one / total, 2) == 0.03 and round(100 * 2 * one / total, 3) == 0.065
    body = errata_entries()["N13"]
    for text in ("1,024", "3,152,384", "0.03 %", "0.065 %"):
        assert text in body, f"N13 should state {text}"
    assert "tenth of a percent" not in body


@pytest.mark.parametrize("d", [8, 64, 512])
def test_c1_the_unbiased_std_scales_layernorm_by_sqrt_of_d_minus_1_over_d(d):
    """A1's LayerNormalization with gain 1, bias 0 and a negligible epsilon is LayerNorm times sqrt((d-1)/d)."""
    torch.manual_seed(0)
    x = torch.randn(32, d, dtype=torch.float64)
    theirs = (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-12)
    ref = nn.functional.layer_norm(x, (d,), eps=0.0)
    ratio = theirs / ref
    assert torch.allclose(ratio, torch.full_like(ratio, math.sqrt((d - 1) / d)), rtol=1e-9)
    body = errata_entries()["C1"]
    assert "factor $\\sqrt{(d-1)/d}$" in body and "relative difference of $1-\\sqrt{(d-1)/d}$" in body


def test_r5_gives_no_reason_the_paper_does_not_give():
    body = errata_entries()["R5"]
    assert "is why the original Transformer" not in body


# --------------------------------------------------------------------------- the source-code notebook


def test_source_code_notebook_runs_every_article_block():
    nb = json.loads(read("source_code.ipynb"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    literals = [c for c in code if re.search(r"^A\d_[A-Z_0-9]+ = r'''", c, flags=re.M)]
    # 21 Python blocks in the five articles, plus A5's printed log
    assert len(literals) == 22, f"expected 22 article blocks in the notebook, found {len(literals)}"
    assert all("run_source_snippet" in c or "A3_BERT" in c or "A5_PRINTED_LOG" in c for c in literals)


def test_flax_is_optional_and_its_cells_say_when_they_did_not_run():
    requirements = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    assert not re.search(r"^\s*(flax|jax)\b", requirements, flags=re.M), "Flax and JAX are optional, not requirements"
    nb = json.loads(read("source_code.ipynb"))
    flax_cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "HAVE_FLAX" in "".join(c["source"])]
    assert len(flax_cells) >= 2
    assert any("NOT run" in c for c in flax_cells), "without Flax the cells must say plainly that they did not run"
    assert not any(re.search(r"^\s*(import|from)\s+(flax|jax)\b", c, flags=re.M) for c in flax_cells)


# --------------------------------------------------------------------------- the intro's claims


def _stamp_line(name: str) -> str:
    nb = json.loads(read(name))
    cells = [c for c in nb["cells"] if "resnorm-stamp" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, name
    return re.sub(r"<[^>]+>", "", "".join(cells[0]["source"]))


def test_the_intro_describes_the_stamp_line_as_the_executor_writes_it():
    described = read("intro.md").split("## What the stamp under each title means", 1)[1]
    quoted = " ".join(l.lstrip("> ").strip() for l in described.splitlines() if l.startswith(">"))
    pattern = re.escape(quoted).replace(r"\*device\*", ".+").replace(r"\*version\*", r"\S+")
    pattern = pattern.replace(r"\*mode\*", "(quick|cpu|full)").replace(r"\*date\*", r"\d{4}-\d\d-\d\d")
    pattern = pattern.replace(r"\*wall\ time\*", ".+").replace(r"\*hash\*", "[0-9a-f]{12}")
    assert re.fullmatch(pattern, _stamp_line("source_code.ipynb")), (quoted, _stamp_line("source_code.ipynb"))


@pytest.mark.parametrize("page", ["layernorm.ipynb", "layernorm_pitfalls.ipynb", "residual.ipynb", "source_code.ipynb"])
def test_the_pages_the_intro_says_are_cpu_runs_are_stamped_so(page):
    assert " cpu mode, " in _stamp_line(page), f"the intro says {page} is committed from a cpu-mode run"


@pytest.mark.parametrize("page", ["training.ipynb", "experiments.ipynb", "performance.ipynb"])
def test_the_pages_the_intro_says_are_gpu_runs_are_stamped_so(page):
    line = _stamp_line(page)
    assert " full mode, " in line and "NVIDIA" in line, f"the intro says {page} is committed from a GPU run: {line}"
