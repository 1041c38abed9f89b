"""Consistency checks for the errata chapter, its glossary, the source-code notebook and the bibliography.

The build catches a broken link only when it runs; these checks run in a second and say
which entry is wrong.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

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
FIELDS = ("**Where:**", "**Quote:**", "**Category:**", "**What is true:**", "**Shown in:**")


def read(name: str) -> str:
    return (BOOK / name).read_text(encoding="utf-8")


def bib_keys() -> list[str]:
    return re.findall(r"^@\w+\{([^,\s]+),", read("references.bib"), flags=re.M)


def cited_keys(text: str) -> set[str]:
    keys = set()
    for group in re.findall(r"\{cite(?::[pt])?\}`([^`]+)`", text):
        keys.update(k.strip() for k in group.split(","))
    return keys


def errata_entries() -> dict[str, str]:
    """Entry id (R1, N3, ...) -> the text of the entry."""
    text = read("errata.md")
    parts = re.split(r"^### ([RNTCHX]\d+) ", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def notebook_labels(name: str) -> set[str]:
    nb = json.loads(read(name))
    labels = set()
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            labels.update(re.findall(r"^\(([\w-]+)\)=\s*$", source, flags=re.M))
    return labels


def test_bibliography_keys_are_unique_and_complete():
    keys = bib_keys()
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    assert not duplicates, f"duplicate keys in references.bib: {duplicates}"
    entries = re.split(r"^@", read("references.bib"), flags=re.M)[1:]
    for entry in entries:
        key = entry.split("{", 1)[1].split(",", 1)[0]
        for field in ("author", "title", "year"):
            assert re.search(rf"^\s*{field}\s*=", entry, flags=re.M), f"{key} has no {field}"
        has_identifier = re.search(r"^\s*(eprint|doi|isbn|url)\s*=", entry, flags=re.M)
        citable = "publisher" in entry or "institution" in entry or ("journal" in entry and "pages" in entry)
        assert has_identifier or citable, f"{key} has no arXiv id, DOI, ISBN, publisher, institution or journal pages"


@pytest.mark.parametrize("page", ["errata.md", "glossary.md"])
def test_every_citation_is_in_the_bibliography(page):
    missing = cited_keys(read(page)) - set(bib_keys())
    assert not missing, f"{page} cites keys missing from references.bib: {sorted(missing)}"


def test_every_errata_entry_is_complete():
    entries = errata_entries()
    assert len(entries) >= 40, f"expected the full errata, found {len(entries)} entries"
    for entry_id, body in entries.items():
        for field in FIELDS:
            assert field in body, f"errata entry {entry_id} has no {field}"
        category_line = body.split("**Category:**", 1)[1].split("\n", 1)[0]
        named = {c for c in CATEGORIES if c in category_line}
        assert named, f"errata entry {entry_id}: category {category_line.strip()!r} is none of {sorted(CATEGORIES)}"
        shown = body.split("**Shown in:**", 1)[1].split("\n", 1)[0]
        assert "{doc}" in shown or "{ref}" in shown, f"errata entry {entry_id} links to no page of the book"


def test_every_reference_target_exists():
    labels = notebook_labels("source_code.ipynb")
    labels |= set(re.findall(r"^\(([\w-]+)\)=\s*$", read("errata.md"), flags=re.M))
    for page in ("errata.md", "glossary.md"):
        targets = re.findall(r"\{ref\}`[^`<]*<([\w-]+)>`", read(page))
        missing = sorted(set(targets) - labels)
        assert not missing, f"{page} refers to labels that are not defined: {missing}"


def test_every_linked_page_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = {Path(p).name for p in re.findall(r"^\s*-?\s*(?:root|file):\s*(\S+)\s*$", toc, flags=re.M)}
    for page in ("errata.md", "glossary.md"):
        docs = set(re.findall(r"\{doc\}`(?:[^`<]*<)?([\w/.-]+?)>?`", read(page)))
        missing = sorted(d for d in docs if d not in listed)
        assert not missing, f"{page} links to pages missing from _toc.yml: {missing}"


def test_source_code_notebook_runs_every_article_block():
    nb = json.loads(read("source_code.ipynb"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    literals = [c for c in code if re.search(r"^A\d_[A-Z_0-9]+ = r'''", c, flags=re.M)]
    # 21 Python blocks in the five articles, plus A5's printed log
    assert len(literals) == 22, f"expected 22 article blocks in the notebook, found {len(literals)}"
    assert all("run_source_snippet" in c or "A3_BERT" in c or "A5_PRINTED_LOG" in c for c in literals)


def headings(page: str) -> list[str]:
    path = BOOK / page
    if path.suffix == ".ipynb":
        nb = json.loads(path.read_text(encoding="utf-8"))
        text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    else:
        text = path.read_text(encoding="utf-8")
    return [h.strip().replace("`", "") for h in re.findall(r"^#{1,4} (.+)$", text, flags=re.M)]


def test_named_sections_exist_in_the_linked_pages():
    """A link written as {doc}`page`, section "Title" must name a heading that the page has."""
    text = read("errata.md")
    pattern = r"\{doc\}`([\w-]+)`,? sections? ((?:\"[^\"]+\"(?:,| and)? ?)+)"
    found = re.findall(pattern, text)
    assert found, "no section names found; has the link format changed?"
    for page, quoted in found:
        target = next(p for p in (f"{page}.ipynb", f"{page}.md") if (BOOK / p).exists())
        titles = headings(target)
        for name in re.findall(r"\"([^\"]+)\"", quoted):
            assert any(t.startswith(name) for t in titles), f"{target} has no section starting {name!r}"
