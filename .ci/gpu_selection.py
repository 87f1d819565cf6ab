"""The GPU test selection (tests/gpu_selection.txt): parser, pytest plugin and command line. Standard library only.

File format, one entry a line:

* ``# ...`` is a comment (also after an entry); ``[name]`` starts a section;
* ``tests/test_x.py`` selects every test of the file;
* ``tests/test_x.py::PATTERN`` selects the tests of the file whose name after ``::`` (class and
  parameters included) or whose name without its ``[parameters]`` matches PATTERN, where ``*``
  matches any text and ``?`` one character (no other wildcards: ``[`` is a literal);
* a leading ``?`` marks an entry that may match nothing (a test file still being written).

As a pytest plugin (``-p gpu_selection`` with ``.ci`` on the path):

* ``--gpu-selection FILE`` keeps the tests the file selects, ordered by section and entry (the
  selection's order is the order of value), and deselects the rest;
* ``--gpu-sections a,b`` keeps only those sections;
* ``--gpu-selection-report PATH`` writes what was selected and what did not resolve (JSON);
* ``--gpu-selection-check`` fails the run (usage error) when an entry without ``?`` matches no
  collected test, or when a collected test marked ``gpu`` is in no section;
* ``--gpu-outcomes PATH`` appends one JSON line per finished test phase as it is reported, so a
  run killed from outside still leaves what it ran;
* ``--gpu-deadline EPOCH`` stops the run (as ``-x`` does: the tests in flight finish) once the
  clock passes EPOCH, so pytest ends by itself, with its summary, before an outer timeout.

Command line (``python3 .ci/gpu_selection.py ...``): ``show`` prints the selection, ``files``
the test files to hand pytest, ``sections`` the section names.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
import time

GPU_MARKER = "gpu"
# A test is GPU-only by its skip reason when the reason starts so (the suite's convention).
GPU_ONLY_REASON = "GPU-only"
_SECTION = re.compile(r"^\[([A-Za-z0-9_]+)\]$")


@dataclasses.dataclass
class Entry:
    section: str
    path: str
    pattern: str | None
    optional: bool
    line: int
    text: str

    def __post_init__(self):
        self._rx = None if self.pattern is None else _glob(self.pattern)

    def matches(self, nodeid: str) -> bool:
        path, sep, name = nodeid.partition("::")
        if path != self.path:
            return False
        if self._rx is None:
            return True
        return bool(sep) and bool(self._rx.fullmatch(name) or self._rx.fullmatch(name.split("[", 1)[0]))


def _glob(pattern: str) -> re.Pattern:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


class SelectionError(ValueError):
    """A malformed selection file; the message names the file and line."""


def parse(path: str | pathlib.Path) -> list[Entry]:
    """The entries of a selection file, in file order."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise SelectionError(f"selection file {str(path)!r} does not exist")
    entries: list[Entry] = []
    section = None
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        m = _SECTION.match(text)
        if m:
            section = m.group(1)
            continue
        if text.startswith("["):
            raise SelectionError(f"{path}:{no}: a section name is [letters, digits, _], got {text!r}")
        if section is None:
            raise SelectionError(f"{path}:{no}: entry {text!r} comes before any [section]")
        optional = text.startswith("?")
        target = text[1:].strip() if optional else text
        if " " in target:
            raise SelectionError(f"{path}:{no}: an entry is one path or path::pattern without spaces, got {text!r}")
        file, sep, pattern = target.partition("::")
        if not file.endswith(".py") or (sep and not pattern):
            raise SelectionError(f"{path}:{no}: expected tests/<file>.py or tests/<file>.py::<pattern>, got {text!r}")
        entries.append(Entry(section, file, pattern if sep else None, optional, no, text))
    if not entries:
        raise SelectionError(f"selection file {str(path)!r} holds no entries")
    return entries


def sections(entries: list[Entry]) -> list[str]:
    return list(dict.fromkeys(e.section for e in entries))


def _chosen(entries: list[Entry], wanted: list[str] | None) -> list[Entry]:
    if not wanted:
        return entries
    known = sections(entries)
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise SelectionError(f"sections {unknown} are not in the selection (it has {known})")
    return [e for e in entries if e.section in wanted]


def files(entries: list[Entry], root: pathlib.Path, with_gpu_marked: bool = False,
          tests_dir: str = "tests") -> list[str]:
    """The existing test files the entries name (in entry order); with ``with_gpu_marked``, also every
    ``test_*.py`` under ``tests_dir`` whose text marks a test ``gpu``, so that collecting them finds every
    such test (a mark is written ``mark.gpu``, in a decorator, a ``pytestmark`` or a ``pytest.param``)."""
    out = [e.path for e in entries if (root / e.path).is_file()]
    if with_gpu_marked:
        for p in sorted((root / tests_dir).rglob("test_*.py")):
            if re.search(rf"\bmark\.{GPU_MARKER}\b", p.read_text(errors="replace")):
                out.append(p.relative_to(root).as_posix())
    return list(dict.fromkeys(out))


def select(entries: list[Entry], nodeids: list[str]) -> dict:
    """Which entry (index) first takes each node id, and how many node ids each entry matches."""
    first: dict[str, int] = {}
    counts = [0] * len(entries)
    for nodeid in nodeids:
        for i, e in enumerate(entries):
            if e.matches(nodeid):
                counts[i] += 1
                first.setdefault(nodeid, i)
    return {"first": first, "counts": counts}


def check(entries: list[Entry], nodeids: list[str], gpu_marked: list[str], gpu_only_unmarked: list[str]) -> dict:
    """Problems (entries that resolve to nothing, gpu-marked tests outside the selection) and notes."""
    sel = select(entries, nodeids)
    problems, notes = [], []
    for e, n in zip(entries, sel["counts"]):
        if n == 0 and not e.optional:
            problems.append(f"line {e.line} [{e.section}] {e.text!r} matches no collected test")
        elif n == 0:
            notes.append(f"line {e.line} [{e.section}] {e.text!r} (optional) matches no test yet")
    missing = [t for t in gpu_marked if t not in sel["first"]]
    problems += [f"test marked {GPU_MARKER!r} is in no section of the selection: {t}" for t in missing]
    notes += [f"GPU-only by its skip reason but not marked {GPU_MARKER!r}: {t}"
              for t in gpu_only_unmarked if t not in gpu_marked]
    position = {nodeid: k for k, nodeid in enumerate(nodeids)}
    by_section: dict[str, list[str]] = {s: [] for s in sections(entries)}
    for nodeid, i in sorted(sel["first"].items(), key=lambda kv: (kv[1], position[kv[0]])):
        by_section[entries[i].section].append(nodeid)
    return {"problems": problems, "notes": notes, "sections": by_section,
            "entries": [{"line": e.line, "section": e.section, "entry": e.text, "matches": n}
                        for e, n in zip(entries, sel["counts"])],
            "gpu_marked": gpu_marked, "gpu_only_unmarked": gpu_only_unmarked}


# ---- pytest plugin ---------------------------------------------------------------------------

def pytest_addoption(parser):
    group = parser.getgroup("gpu_selection", "the GPU test selection (.ci/gpu_selection.py)")
    group.addoption("--gpu-selection", metavar="FILE", help="keep only the tests this selection file selects")
    group.addoption("--gpu-sections", metavar="A,B", help="only these sections of the selection")
    group.addoption("--gpu-selection-report", metavar="PATH", help="write the selection's resolution as JSON")
    group.addoption("--gpu-selection-check", action="store_true",
                    help="fail when an entry matches nothing or a gpu-marked test is in no section")
    group.addoption("--gpu-outcomes", metavar="PATH", help="append each test phase's outcome as a JSON line")
    group.addoption("--gpu-deadline", type=float, metavar="EPOCH", help="stop scheduling tests after this time")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


class _Recorder:
    """Controller side: outcome lines as reports arrive, and the stop at the deadline."""

    def __init__(self, config):
        self.config = config
        self.session = None
        path = config.getoption("--gpu-outcomes")
        self.out = open(path, "a", buffering=1) if path else None   # line-buffered: each line lands at once
        self.deadline = config.getoption("--gpu-deadline")
        self.stopped = False

    def pytest_sessionstart(self, session):
        self.session = session

    def pytest_runtest_logreport(self, report):
        if self.out and (report.when == "call" or report.outcome != "passed"):
            message = ""
            if report.outcome != "passed" and report.longrepr is not None:
                message = str(report.longrepr)[-2000:]
            line = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
                    "seconds": round(report.duration, 3), "xfail": bool(getattr(report, "wasxfail", None)),
                    "message": message}
            self.out.write(json.dumps(line) + "\n")
        if self.deadline and not self.stopped and time.time() > self.deadline:
            self.stopped = True
            reason = "the GPU check's deadline for this step passed"
            dsession = self.config.pluginmanager.getplugin("dsession")
            if dsession is not None:
                dsession.shouldstop = reason
            if self.session is not None:
                self.session.shouldstop = reason

    def pytest_unconfigure(self, config):
        if self.out:
            self.out.close()


def pytest_configure(config):
    if not _is_worker(config) and (config.getoption("--gpu-outcomes") or config.getoption("--gpu-deadline")):
        config.pluginmanager.register(_Recorder(config), "gpu_selection_recorder")


def _gpu_only_by_reason(item) -> bool:
    for mark in item.iter_markers("skipif"):
        reason = mark.kwargs.get("reason", "")
        if isinstance(reason, str) and reason.startswith(GPU_ONLY_REASON):
            return True
    return False


def pytest_collection_modifyitems(session, config, items):
    path = config.getoption("--gpu-selection")
    if not path:
        return
    import pytest

    try:
        entries = parse(path)
        wanted = [s for s in (config.getoption("--gpu-sections") or "").split(",") if s]
        chosen = _chosen(entries, wanted)
    except SelectionError as e:
        raise pytest.UsageError(str(e)) from None
    nodeids = [item.nodeid for item in items]
    gpu_marked = [item.nodeid for item in items if item.get_closest_marker(GPU_MARKER)]
    unmarked = [item.nodeid for item in items if _gpu_only_by_reason(item) and not item.get_closest_marker(GPU_MARKER)]
    report = check(entries, nodeids, gpu_marked, unmarked)
    sel = select(chosen, nodeids)
    position = {nodeid: k for k, nodeid in enumerate(nodeids)}
    keep = sorted((item for item in items if item.nodeid in sel["first"]),
                  key=lambda item: (sel["first"][item.nodeid], position[item.nodeid]))
    dropped = [item for item in items if item.nodeid not in sel["first"]]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep
    report["chosen_sections"] = wanted or sections(entries)
    report["selected"] = len(keep)
    # Every xdist worker collects the same items; the first one writes the report.
    writer = not _is_worker(config) or config.workerinput.get("workerid") == "gw0"
    out = config.getoption("--gpu-selection-report")
    if out and writer:
        pathlib.Path(out).write_text(json.dumps(report, indent=1))
    if config.getoption("--gpu-selection-check") and report["problems"]:
        raise pytest.UsageError("the GPU selection does not match the suite:\n  " + "\n  ".join(report["problems"]))


# ---- command line ----------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["show", "files", "sections"])
    parser.add_argument("--selection", default="tests/gpu_selection.txt")
    parser.add_argument("--sections", default="", help="comma-separated sections (default: all)")
    parser.add_argument("--root", default=".", help="the repository root the entries' paths start from")
    parser.add_argument("--with-gpu-marked", action="store_true",
                        help="files: also every test file that marks a test gpu")
    args = parser.parse_args(argv)
    try:
        entries = parse(args.selection)
        chosen = _chosen(entries, [s for s in args.sections.split(",") if s])
    except SelectionError as e:
        parser.error(str(e))
    root = pathlib.Path(args.root)
    if args.command == "sections":
        print(" ".join(sections(chosen)))
    elif args.command == "files":
        print("\n".join(files(chosen, root, args.with_gpu_marked)))
    else:
        for s in sections(chosen):
            print(f"[{s}]")
            for e in chosen:
                if e.section == s:
                    where = "" if (root / e.path).is_file() else "   (file not there yet)"
                    print(f"  {e.text}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
