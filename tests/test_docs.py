"""docs/DESIGN.md is the design the code cites: every citation names a section that exists, and the
code and README carry no history notes (those belong in CHANGELOG.md and the git log)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# Trees that are not the project's own source (environments, build output, run artefacts).
_NOT_SOURCE = {".venv", ".git", "runs", "build", "dist", "node_modules", "__pycache__"}

# A section id as DESIGN.md numbers its headings: "2", "7b", "4.3".
_SECTION_ID = r"\d+[a-z]?(?:\.\d+)?"
# "## 7b. Attention", "### 4.3 How to add an op"
_HEADING = re.compile(rf"^#{{2,4}}\s+({_SECTION_ID})\.?\s+(.+?)\s*$", re.M)
# "DESIGN.md section 3", "DESIGN.md §6", "DESIGN.md, section 7b", across a line break too
_CITATION = re.compile(rf"DESIGN\.md,?\s+(?:section\s+|§\s*)({_SECTION_ID})\b")
# 'DESIGN.md, "How to add an op"': a section cited by its title
_TITLE_CITATION = re.compile(r'DESIGN\.md,?\s+"([^"]+)"')
# Inside DESIGN.md: "section 4.4", "sections 2"
_INTERNAL = re.compile(rf"\bsections?\s+({_SECTION_ID})\b")

# History notes, spelled so that this file does not match itself.
_HISTORY = re.compile("\\b" + "issue" + r"s?\s+#?\d+" + "|" + "this" + r"\s+round\b", re.I)
_HISTORY_TREES = ("precision_kernels", "rl", "benchmarks", "tests")


def _sources() -> list[Path]:
    """The project's .py files and the README; not this file, whose examples are not citations."""
    files = [p for p in ROOT.rglob("*.py") if not _NOT_SOURCE & set(p.relative_to(ROOT).parts)
             and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
             and p != Path(__file__).resolve()]
    return sorted(files) + [ROOT / "README.md"]


def _sections() -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _HEADING.finditer(DESIGN.read_text())}


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _citations() -> list[tuple[str, int, str, str]]:
    """(file, line, kind, what) for every citation of DESIGN.md in the sources; kind is "id" or "title"."""
    found = []
    for path in _sources():
        text = path.read_text()
        rel = str(path.relative_to(ROOT))
        found += [(rel, _line_of(text, m.start()), "id", m.group(1)) for m in _CITATION.finditer(text)]
        found += [(rel, _line_of(text, m.start()), "title", m.group(1)) for m in _TITLE_CITATION.finditer(text)]
    return found


def test_design_exists_with_numbered_sections():
    sections = _sections()
    for required in ("2", "3", "4", "5", "6", "7", "7b", "7c"):
        assert required in sections, f"docs/DESIGN.md has no section {required} (has {sorted(sections)})"


def test_every_citation_names_an_existing_section():
    sections = _sections()
    titles = {t.strip().lower() for t in sections.values()}
    citations = _citations()
    assert citations, "found no DESIGN.md citation at all: the patterns or the file walk are broken"
    broken = [f"{f}:{line}: section {what!r}" for f, line, kind, what in citations
              if kind == "id" and what not in sections]
    broken += [f"{f}:{line}: section titled {what!r}" for f, line, kind, what in citations
               if kind == "title" and what.strip().lower() not in titles]
    assert not broken, "citations of sections docs/DESIGN.md does not have:\n" + "\n".join(broken)


def test_design_cross_references_resolve():
    text = DESIGN.read_text()
    sections = _sections()
    broken = [f"docs/DESIGN.md:{_line_of(text, m.start())}: section {m.group(1)}"
              for m in _INTERNAL.finditer(text) if m.group(1) not in sections]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("text, cited", [
    ("(DESIGN.md section 3)", "3"),
    ("DESIGN.md §6, and", "6"),
    ("see DESIGN.md section 7b.", "7b"),
    ("see DESIGN.md\n    section 4.3 for", "4.3"),
])
def test_citation_pattern_reads_every_form(text, cited):
    assert [m.group(1) for m in _CITATION.finditer(text)] == [cited]


@pytest.mark.parametrize("text, history", [
    ("before " + "issue" + " 14 it was", True),
    ("(" + "Issue" + " #13 section 4)", True),
    ("added in " + "this" + " round", True),
    ("an issue with rounding", False),
    ("this rounding helper", False),
])
def test_history_pattern(text, history):
    assert bool(_HISTORY.search(text)) is history


def test_no_history_in_code_or_readme():
    files = [ROOT / "README.md"] + sorted(p for tree in _HISTORY_TREES for p in (ROOT / tree).rglob("*.py"))
    hits = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _HISTORY.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "history belongs in CHANGELOG.md or the git log, not here:\n" + "\n".join(hits)


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' dropped, spaces to '-'."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_readme_links_to_headings_that_exist():
    readme = (ROOT / "README.md").read_text()
    design_anchors, own_anchors = _anchors(DESIGN.read_text()), _anchors(readme)
    links = re.findall(r"\]\((docs/DESIGN\.md)?#([^)\s]+)\)", readme)
    assert links, "the README links to no heading: the pattern is broken"
    broken = [f"{target or 'README.md'}#{anchor}" for target, anchor in links
              if anchor not in (design_anchors if target else own_anchors)]
    assert not broken, "README links to headings that do not exist: " + ", ".join(broken)
