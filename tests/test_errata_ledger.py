"""The sentence-by-sentence ledger of the five source articles (book/errata_ledger.yml).

The ledger has one row per *unit* of each article, in the article's order. A unit is:

- a sentence of its prose: a non-empty line outside code blocks and display formulas, cut after
  each 。, ！ or ？ (a line without them is one unit);
- a display formula ($$ ... $$), or a fenced code block, as a whole.

Headings, and lines that are nothing but a bold label (``**优点**：``), are not units: they give a
unit its place ("§3.3 缺点 item 1"). Each row gives that place, the opening of the unit (a Chinese
fragment, or the first line of a formula or of a code block), an English gloss, a verdict
(correct, wrong, misleading, uncheckable) and its grounds: an errata entry, a citation, or for an
uncheckable unit the reason.

The articles themselves are not part of the book. Where they are available (``RESNORM_SEEDS``,
or ``shared/seeds`` next to or above the repository), the coverage test splits each one into
units and checks the ledger row by row; everything else is checked from the ledger alone.

``python tests/test_errata_ledger.py`` rewrites book/errata_ledger.md from the ledger;
``python tests/test_errata_ledger.py --skeleton A1`` prints the rows of a new article's ledger.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
LEDGER = BOOK / "errata_ledger.yml"
PAGE = BOOK / "errata_ledger.md"
ARTICLES = ("A1", "A2", "A3", "A4", "A5")
SEED_PREFIX = {"A1": "000_", "A2": "001_", "A3": "002_", "A4": "003_", "A5": "004_"}
VERDICTS = ("correct", "wrong", "misleading", "uncheckable")
KINDS = ("text", "math", "code")

# The section labels the articles use, with the English the ledger and the errata show next to them.
LABELS = {
    "优点": "advantages",
    "缺点": "drawbacks",
    "答案": "answer",
    "解析": "explanation",
    "摘要": "abstract",
    "引言": "introduction",
    "结论": "conclusion",
    "案例分析": "case analysis",
    "代码示例": "code example",
    "代码解读": "reading the code",
    "代码分析": "analysing the code",
    "残差连接的优点": "advantages of residual connections",
    "残差连接的缺点": "drawbacks of residual connections",
    "层规范化的优点": "advantages of layer normalization",
    "层规范化的缺点": "drawbacks of layer normalization",
    "残差连接步骤": "residual-connection steps",
    "层规范化步骤": "layer-normalization steps",
    "多头自注意力层的数学模型": "model of the multi-head self-attention layer",
    "前向网络层的数学模型": "model of the feed-forward layer",
    "多头自注意力层的公式推导": "derivation for the multi-head self-attention layer",
    "前向网络层的公式推导": "derivation for the feed-forward layer",
    "多层自注意力机制": "multi-layer self-attention",
    "多头注意力机制": "multi-head attention",
    "计算机视觉": "computer vision",
    "自然语言处理": "natural language processing",
    "语音处理": "speech processing",
    "Step 1: 残差连接实现": "step 1, implementing the residual connection",
    "Step 2: 层规范化实现": "step 2, implementing layer normalization",
}

BOLD_LINE = re.compile(r"^\*\*([^*]+?)[：:]?\*\*[：:]?$")


# --------------------------------------------------------------------------- splitting an article


def _known(label: str) -> str:
    return label if label in LABELS else ""


def units(text: str) -> list[tuple[str, str, str]]:
    """(kind, place, text) for each unit of an article, in order."""
    out: list[tuple[str, str, str]] = []
    lines = text.splitlines()
    section, sec_level, label = "opening", 0, ""

    def place(item: str = "") -> str:
        where = "§" + section if re.match(r"\d", section) else section
        return " ".join(p for p in (where, label, item) if p)

    i = 0
    while i < len(lines):
        s = lines[i].strip()
        if s.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append(("code", place(), "\n".join(lines[i : j + 1])))
            i = j + 1
            continue
        if s.startswith("$$"):
            j = i
            if s == "$$" or not s[2:].rstrip().endswith("$$"):
                j = i + 1
                while j < len(lines) and not lines[j].strip().endswith("$$"):
                    j += 1
            out.append(("math", place(), "\n".join(line.strip() for line in lines[i : j + 1])))
            i = j + 1
            continue
        heading = re.match(r"(#+)\s*(.*)$", s)
        if heading:
            level, title = len(heading.group(1)), heading.group(2).strip()
            number = re.match(r"(\d+(?:\.\d+)*)\.?\s", title)
            question = re.match(r"(?:Q(\d+)|题目(\d+))", title)
            if number:
                section, sec_level, label = number.group(1), level, ""
            elif question:
                n = question.group(1) or question.group(2)
                section = (section.split(" ")[0] + " Q" + n) if re.match(r"\d", section) else "Q" + n
                label = ""
            elif re.match(r"\d", section) and level > sec_level:
                label = _known(title)
            elif level == 1 or title.startswith("主题"):
                section, sec_level, label = "opening", level, ""
            else:
                section, sec_level, label = title, level, ""
            i += 1
            continue
        if not s:
            i += 1
            continue
        bold = BOLD_LINE.match(s)
        if bold:
            text_ = bold.group(1).strip()
            q = re.match(r"Q(\d+)", text_)
            if q:
                section, label = section.split(" ")[0] + " Q" + q.group(1), ""
            else:
                label = _known(text_)
            i += 1
            continue
        item_match = re.match(r"(\d+)\.\s", s)
        item = "item " + item_match.group(1) if item_match else ""
        inline_label = re.match(r"(?:>\s*)?\*\*([^*]+?)[：:]?\*\*[：:]?\s*\S", s) or re.match(r">\s*(摘要)：", s)
        if inline_label and not item_match:
            label = _known(inline_label.group(1).strip())
        for piece in re.findall(r"[^。！？]+[。！？]?", s):
            if piece.strip():
                out.append(("text", place(item), piece.strip()))
        i += 1
    return out


def plain(text: str) -> str:
    """A unit's text without list numbers, bold markers, quote markers and repeated spaces."""
    text = re.sub(r"^\s*(?:>\s*)?(?:[-*]\s+|\d+\.\s+)?", "", text)
    text = text.replace("**", "")
    return re.sub(r"\s+", " ", text).strip()


def opening(kind: str, text: str, limit: int = 30) -> str:
    """The fragment a ledger row quotes: the opening of a sentence, or the first line of a block."""
    if kind != "text":
        body = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("```") and l.strip() != "$$"]
        first = body[0].strip("$").strip() if body else ""
        first = re.sub(r"\\begin\{aligned\}|\\\\$", "", first).strip() or (body[1] if len(body) > 1 else "")
        return first if len(first) <= 60 else first[:57] + "…"
    s = plain(text)
    if len(s) <= limit + 6:
        return s
    cut = max(s.rfind("，", 16, limit + 1), s.rfind("：", 16, limit + 1))
    end = cut + 1 if cut > 0 else 26
    while end < len(s) and s[end - 1].isascii() and s[end - 1].isalnum() and s[end].isascii() and s[end].isalnum():
        end += 1  # do not cut a Latin word in two
    return s[:end] + "…"


def seeds_dir() -> Path | None:
    candidates = [os.environ.get("RESNORM_SEEDS", ""), ROOT / "shared" / "seeds", ROOT.parent / "shared" / "seeds"]
    for c in candidates:
        if c and Path(c).is_dir() and any(Path(c).glob("000_*.txt")):
            return Path(c)
    return None


def seed_text(article: str) -> str | None:
    folder = seeds_dir()
    if folder is None:
        return None
    files = sorted(folder.glob(SEED_PREFIX[article] + "*.txt"))
    return files[0].read_text(encoding="utf-8") if files else None


# --------------------------------------------------------------------------- the ledger and its page


def load() -> dict:
    return yaml.safe_load(LEDGER.read_text(encoding="utf-8"))


def gloss_place(where: str) -> str:
    """'§3.3 缺点 item 1' -> '§3.3 缺点 (drawbacks) item 1'."""
    for zh, en in sorted(LABELS.items(), key=lambda kv: -len(kv[0])):
        if zh in where:
            return where.replace(zh, f"{zh} ({en})")
    return where


def _group(where: str) -> str:
    """The dropdown a row goes in: its top-level section."""
    m = re.match(r"§(\d+)", where)
    if m:
        return "§" + m.group(1)
    m = re.match(r"(Q\d+)", where)
    return m.group(1) if m else where.split(" ")[0]


def _row_markdown(row: dict) -> str:
    quote = row["zh"]
    shown = f"「{quote}」" if row["kind"] == "text" else f"{row['kind']} block `{quote.replace('`', '')}`"
    grounds = [f"{{ref}}`{e} <errata-{e.lower()}>`" for e in _split(row.get("entry"))]
    if row.get("cite"):
        grounds.append(f"{{cite:p}}`{row['cite']}`")
    verdict, note = row["verdict"], row.get("note")
    text = f"- **{row['id']}** {gloss_place(row['where'])} {shown}: {row['en']}. "
    if verdict == "uncheckable":
        return text + f"*uncheckable*: {note}."
    text += f"**{verdict}** (" + "; ".join(grounds) + ")"
    return text + (f"; {note}." if note else ".")


def _split(value) -> list[str]:
    return [v.strip() for v in str(value or "").split(",") if v.strip()]


def render(ledger: dict) -> str:
    out = [ledger["intro"].rstrip(), ""]
    out += ["## Summary", "", "| article | units | correct | wrong | misleading | uncheckable |", "|---|---|---|---|---|---|"]
    for a in ARTICLES:
        rows = ledger["articles"][a]["rows"]
        c = Counter(r["verdict"] for r in rows)
        out.append(f"| [{a}](#ledger-{a.lower()}) | {len(rows)} | " + " | ".join(str(c[v]) for v in VERDICTS) + " |")
    total = Counter(r["verdict"] for a in ARTICLES for r in ledger["articles"][a]["rows"])
    n = sum(total.values())
    out.append(f"| all | {n} | " + " | ".join(str(total[v]) for v in VERDICTS) + " |")
    out.append("")
    for a in ARTICLES:
        art = ledger["articles"][a]
        out += [f"(ledger-{a.lower()})=", f"## {a}", "", art["about"].rstrip(), ""]
        groups: dict[str, list[dict]] = {}
        for row in art["rows"]:
            groups.setdefault(_group(row["where"]), []).append(row)
        for name, rows in groups.items():
            c = Counter(r["verdict"] for r in rows)
            counts = ", ".join(f"{c[v]} {v}" for v in VERDICTS if c[v])
            title = gloss_place(name)
            title = "opening lines" if title == "opening" else title
            noun = "unit" if len(rows) == 1 else "units"
            out += [f":::{{dropdown}} {a} {title}: {len(rows)} {noun} ({counts})", ""]
            out += [_row_markdown(r) for r in rows]
            out += ["", ":::", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- tests


def errata_entries() -> dict[str, str]:
    text = (BOOK / "errata.md").read_text(encoding="utf-8")
    parts = re.split(r"^### ([RNTCHX]\d+) ", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts), 2)}


def bib_keys() -> set[str]:
    return set(re.findall(r"^@\w+\{([^,\s]+),", (BOOK / "references.bib").read_text(encoding="utf-8"), flags=re.M))


def test_the_splitter_finds_sentences_formulas_code_and_places():
    text = "\n".join(
        [
            "# 标题",
            "> 关键词：甲,乙",
            "## 3. 方法",
            "### 3.3 算法优缺点",
            "**优点**：",
            "1. 第一句。第二句！",
            "**缺点**：",
            "1. 第三句？",
            "$$",
            "y = x + F(x)",
            "$$",
            "```python",
            "print('。')",
            "```",
            "## 9. 附录：常见问题与解答",
            "### Q1: 问题？",
            "**A**：回答。",
        ]
    )
    got = [(k, w, plain(t) if k == "text" else t.splitlines()[1]) for k, w, t in units(text)]
    assert got == [
        ("text", "opening", "关键词：甲,乙"),
        ("text", "§3.3 优点 item 1", "第一句。"),
        ("text", "§3.3 优点 item 1", "第二句！"),
        ("text", "§3.3 缺点 item 1", "第三句？"),
        ("math", "§3.3 缺点", "y = x + F(x)"),
        ("code", "§3.3 缺点", "print('。')"),
        ("text", "§9 Q1", "A：回答。"),
    ], got
    assert opening("text", "在深度学习领域，残差连接和层规范化是实现神经网络深度的关键技术，特别适用于构建复杂的层次结构。").endswith("…")


def test_the_page_is_rendered_from_the_ledger():
    expected = render(load())
    assert PAGE.read_text(encoding="utf-8") == expected, (
        "book/errata_ledger.md is not what the ledger renders to; run `python tests/test_errata_ledger.py`"
    )


def test_every_row_has_a_verdict_and_its_grounds():
    ledger = load()
    entries = errata_entries()
    keys = bib_keys()
    problems = []
    for a in ARTICLES:
        rows = ledger["articles"][a]["rows"]
        ids = [r["id"] for r in rows]
        assert ids == [f"{a}-{i:03d}" for i in range(1, len(rows) + 1)], f"{a}: row ids are not {a}-001, {a}-002, ..."
        for r in rows:
            rid = r["id"]
            if r.get("kind") not in KINDS or r.get("verdict") not in VERDICTS:
                problems.append(f"{rid}: kind {r.get('kind')!r} or verdict {r.get('verdict')!r} unknown")
                continue
            if not str(r.get("en") or "").strip() or not str(r.get("zh") or "").strip():
                problems.append(f"{rid}: no quote or no English gloss")
            if re.search(r"[\u4e00-\u9fff]", str(r.get("en") or "") + str(r.get("note") or "")):
                problems.append(f"{rid}: the English gloss or note contains Chinese")
            named, cites = _split(r.get("entry")), _split(r.get("cite"))
            for e in named:
                if e not in entries:
                    problems.append(f"{rid}: errata entry {e} does not exist")
                elif a not in entries[e].split("**Where:**", 1)[1].split("\n", 1)[0]:
                    problems.append(f"{rid}: errata entry {e} is cited, but its Where line does not name {a}")
            for c in cites:
                if c not in keys:
                    problems.append(f"{rid}: citation {c} is not in references.bib")
            v = r["verdict"]
            if v in ("wrong", "misleading") and not named:
                problems.append(f"{rid}: a {v} unit needs the errata entry that corrects it")
            if v == "correct" and not (named or cites):
                problems.append(f"{rid}: a correct unit needs a source (a citation or an errata entry)")
            if v == "uncheckable" and not str(r.get("note") or "").strip():
                problems.append(f"{rid}: an uncheckable unit needs the reason in its note")
    assert not problems, "\n".join(problems)


def test_every_label_is_glossed_in_the_glossary():
    glossary = (BOOK / "glossary.md").read_text(encoding="utf-8")
    missing = [zh for zh in LABELS if zh.startswith("Step") is False and zh not in glossary]
    assert not missing, f"section labels used by the ledger but missing from the glossary: {missing}"


@pytest.mark.parametrize("article", ARTICLES)
def test_the_ledger_covers_every_unit_of_the_article(article):
    text = seed_text(article)
    if text is None:
        pytest.skip("the source articles are not available here (set RESNORM_SEEDS to their folder)")
    art = load()["articles"][article]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert art["sha256"] == digest, f"{article} has changed since its ledger was written (sha256 {digest})"
    found = units(text)
    rows = art["rows"]
    problems = []
    for n, ((kind, where, unit), row) in enumerate(zip(found, rows), 1):
        quote = row["zh"].rstrip("…")
        haystack = plain(unit) if kind == "text" else re.sub(r"\s+", " ", unit)
        if row["kind"] != kind or row["where"] != where or re.sub(r"\s+", " ", quote) not in haystack:
            problems.append(f"{row['id']}: expected {kind} at {where!r} starting {opening(kind, unit)!r}, the row has {row['kind']} at {row['where']!r} quoting {row['zh']!r}")
            break
    assert len(rows) == len(found), f"{article} has {len(found)} units, its ledger {len(rows)} rows"
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- command line


def _skeleton(article: str) -> str:
    text = seed_text(article)
    if text is None:
        raise SystemExit("the source articles are not available (set RESNORM_SEEDS)")
    rows = []
    for n, (kind, where, unit) in enumerate(units(text), 1):
        rows.append({"id": f"{article}-{n:03d}", "where": where, "kind": kind, "zh": opening(kind, unit), "en": "", "verdict": ""})
    return yaml.safe_dump(rows, allow_unicode=True, sort_keys=False, width=200)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--skeleton":
        print(_skeleton(sys.argv[2]))
    else:
        PAGE.write_text(render(load()), encoding="utf-8")
        print(f"wrote {PAGE.relative_to(ROOT)}")
