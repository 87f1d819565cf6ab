"""docs/DESIGN.md is the design the code cites: every citation names a section that exists, its layout
tree names every module, the README stays a front door, docs/RESULTS.md stamps every result, and
neither code nor Markdown carries history notes (those belong in CHANGELOG.md and the git log)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# Trees that are not the project's own source (environments, build output, run artefacts).
_NOT_SOURCE = {".venv", ".git", "runs", "build", "dist", "node_modules", "__pycache__"}

# A section id as DESIGN.md numbers its headings: "2", "10", "4.3" (a letter suffix, "7b", is read
# so that a citation of one is reported as broken rather than missed).
_SECTION_ID = r"\d+[a-z]?(?:\.\d+)?"
# "## 8. Attention", "### 4.3 How to add an op"
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
# Markdown also may not speak of its own past: these say a figure or a text is out of date, which
# the text should either fix or date (docs/RESULTS.md's stamps). Code legitimately says "stale"
# (a stale checkpoint file), so this wider list is for Markdown only.
_MD_HISTORY = re.compile(_HISTORY.pattern + "|" + r"\b(?:stale|not\s+rerun|earlier\s+version|this\s+wave"
                         r"|was\s+lent)\b", re.I)
# Every Markdown file but the changelog, whose subject is history: the README and all of docs/.
_MARKDOWN = ("README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
README_MAX_LINES = 250


def _sources() -> list[Path]:
    """The project's .py files and the README; not this file, whose examples are not citations."""
    files = [p for p in ROOT.rglob("*.py") if not _NOT_SOURCE & set(p.relative_to(ROOT).parts)
             and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)
             and p != Path(__file__).resolve()]
    return sorted(files) + [ROOT / "README.md", ROOT / "docs" / "RESULTS.md"]


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
    for required in ("2", "3", "4", "5", "6", "7", "8", "9", "10"):
        assert required in sections, f"docs/DESIGN.md has no section {required} (has {sorted(sections)})"


def test_design_sections_have_whole_numbers():
    lettered = [s for s in _sections() if not re.fullmatch(r"\d+(?:\.\d+)?", s)]
    assert not lettered, f"docs/DESIGN.md numbers sections N or N.M; give these a whole number: {lettered}"


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
    ("see DESIGN.md section 9.", "9"),
    ("see DESIGN.md section 10.", "10"),
    ("see DESIGN.md\n    section 4.3 for", "4.3"),
])
def test_citation_pattern_reads_every_form(text, cited):
    assert [m.group(1) for m in _CITATION.finditer(text)] == [cited]


@pytest.mark.parametrize("text, history", [
    ("before " + "issue" + " 14 it was", True),
    ("(" + "Issue" + " #13 section 4)", True),
    ("added in " + "this" + " round", True),
    ("an issue with rounding", False),
    ("this" + " rounding helper", False),
])
def test_history_pattern(text, history):
    assert bool(_HISTORY.search(text)) is history
    assert bool(_MD_HISTORY.search(text)) is history


@pytest.mark.parametrize("text, history", [
    ("Stale until rerun.", True),
    ("measured before the kernels changed; not rerun", True),
    ("on an earlier version of the baseline", True),
    ("added in this wave", True),
    ("no GPU was lent", True),
    ("a stale checkpoint", True),
    ("rerun it with the command above", False),
    ("the wave of launches", False),
])
def test_markdown_history_pattern(text, history):
    assert bool(_MD_HISTORY.search(text)) is history


def _history_hits(files: list[Path], pattern: re.Pattern) -> list[str]:
    hits = []
    for path in files:
        # Markdown wraps its lines, so a phrase may span two: read each line with the start of the next.
        lines = path.read_text().splitlines() + [""]
        for number, (line, after) in enumerate(zip(lines, lines[1:]), 1):
            both = line + " " + " ".join(after.split()[:2])
            if any(m.start() < len(line) for m in pattern.finditer(both)):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


def test_no_history_in_code():
    files = sorted(p for tree in _HISTORY_TREES for p in (ROOT / tree).rglob("*.py"))
    hits = _history_hits(files, _HISTORY)
    assert not hits, "history belongs in CHANGELOG.md or the git log, not here:\n" + "\n".join(hits)


def test_no_history_in_markdown():
    files = [ROOT / name for name in _MARKDOWN]
    assert {"README.md", "docs/DESIGN.md", "docs/RESULTS.md"} <= set(_MARKDOWN), _MARKDOWN
    hits = _history_hits(files, _MD_HISTORY)
    assert not hits, ("history belongs in CHANGELOG.md or the git log; a figure measured on older code is "
                      "stamped with its commit in docs/RESULTS.md, not called out of date:\n" + "\n".join(hits))


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than '-' dropped, spaces to '-'."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def _relative_links(path: Path) -> list[tuple[str, str]]:
    """(file, anchor) of each relative Markdown link or image in ``path``; file "" is the page itself."""
    links = re.findall(r"\]\(([^)\s#:]*)(?:#([^)\s]+))?\)", path.read_text())
    return [(target, anchor) for target, anchor in links if target or anchor]


@pytest.mark.parametrize("page", _MARKDOWN)
def test_links_reach_files_and_headings_that_exist(page):
    source = ROOT / page
    links = _relative_links(source)
    if page == "README.md":
        assert any(anchor for _, anchor in links), "the README links to no heading: the pattern is broken"
    broken = []
    for target, anchor in links:
        dest = (source.parent / target).resolve() if target else source
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
            broken.append(f"{target or page}#{anchor} (no such heading)")
    assert not broken, f"{page} links to what does not exist: " + ", ".join(broken)


def test_readme_is_a_front_door():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): put results in docs/RESULTS.md and "
        "how things work in docs/DESIGN.md, and link to them")


# docs/RESULTS.md: "Measured 2026-12-07 at commit e19fbeb on AMD EPYC, 2 cores (Triton interpreter)."
_STAMP = re.compile(r"Measured (\d{4}-\d{2}-\d{2}) at commit ([0-9a-f]{7,40}) on ([^.\n]+)")


def test_every_result_is_stamped_under_its_command():
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    assert sections, "docs/RESULTS.md has no ## section"
    bad = []
    for section in sections:
        title = section.splitlines()[0]
        if not _STAMP.search(section):
            bad.append(f"{title!r}: no 'Measured YYYY-MM-DD at commit HASH on MACHINE' line")
        if "```bash" not in section:
            bad.append(f"{title!r}: no ```bash block with the command that regenerates it")
    assert not bad, "docs/RESULTS.md:\n" + "\n".join(bad)


# ---- the layout tree of DESIGN.md section 4 against the modules on disk -----------------------------

_LAYOUT_TREES = ("precision_kernels", "rl", "benchmarks")


def _layout_tree() -> tuple[set[str], set[str]]:
    """The module paths and the folder paths DESIGN.md's layout tree names: its first code block after "## 4. Layout".

    A line is `NAMES  description`, NAMES and the description two or more spaces apart; an entry of
    NAMES ending in "/" is a folder, one ending in ".py" a module; two spaces of indent per level."""
    text = DESIGN.read_text()
    block = re.search(r"^## 4\. Layout\s*\n+```\n(.*?)^```", text, re.M | re.S)
    assert block, "docs/DESIGN.md section 4 has no layout tree (a ``` block right after its heading)"
    folders: list[str] = []
    listed, listed_folders = set(), set()
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = re.split(r"\s{2,}", line.strip())[0].split()
        del folders[depth:]
        for name in names:
            if name.endswith("/"):
                folders.append(name.rstrip("/"))
                listed_folders.add("/".join(folders[:depth + 1]))
            elif name.endswith(".py"):
                listed.add("/".join(folders[:depth] + [name]))
    return listed, listed_folders


def _modules_on_disk() -> set[str]:
    return {str(p.relative_to(ROOT)) for tree in _LAYOUT_TREES for p in (ROOT / tree).rglob("*.py")
            if "__pycache__" not in p.parts}


def test_layout_tree_reads_folders_and_modules():
    listed, folders = _layout_tree()
    assert {"precision_kernels", "precision_kernels/ops", "rl"} <= folders, f"folders read: {sorted(folders)}"
    for module in ("precision_kernels/backend.py", "precision_kernels/kernels/attention.py",
                   "precision_kernels/ops/fp8.py", "rl/train.py", "benchmarks/mismatch.py"):
        assert module in listed, f"the layout tree parser misses {module}: it is broken"


def _where_to_add(module: str, folders: set[str]) -> str:
    folder, name = module.rsplit("/", 1)
    line = f"  {module}: a line `{name}` under `{folder.rsplit('/', 1)[-1]}/`"
    if folder not in folders:
        parent = folder.rsplit("/", 1)[0] if "/" in folder else None
        line += (f", after a folder line `{folder.rsplit('/', 1)[-1]}/` under `{parent.rsplit('/', 1)[-1]}/`"
                 if parent else f", after a top-level folder line `{folder}/`")
    return line


def test_layout_tree_names_every_module():
    listed, folders = _layout_tree()
    missing = sorted(m for m in _modules_on_disk() - listed if not m.endswith("/__init__.py"))
    assert not missing, (
        "docs/DESIGN.md section 4's layout tree lacks these modules. Add one line per module under its "
        "folder's line, indented two spaces deeper than the folder, as `name.py` then two or more spaces "
        "and what it holds:\n" + "\n".join(_where_to_add(m, folders) for m in missing))


def test_layout_tree_names_only_modules_that_exist():
    gone = sorted(m for m in _layout_tree()[0] - _modules_on_disk() if m.split("/")[0] in _LAYOUT_TREES)
    assert not gone, ("docs/DESIGN.md section 4's layout tree names modules that do not exist; delete or "
                      "rename their lines:\n" + "\n".join(f"  {m}" for m in gone))
