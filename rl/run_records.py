"""The run's files on disk: step records in ``metrics.jsonl`` (appended one fsynced line at a time, cut back
atomically on resume) and the flags in the plain form a ``weights_only=True`` checkpoint load reads back."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .metrics import json_safe
from .output_paths import write_output


def append_record(path: Path, record: dict) -> None:
    """One JSON line, flushed and fsynced: the checkpoint that follows never runs ahead of its record."""
    with path.open("a") as f:
        f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plain_args(args) -> dict:
    """The flags as builtin bools, ints, floats and strings: what ``weights_only=True`` loading reads back."""
    def plain(value):
        for kind in (bool, int, float, str):
            if isinstance(value, kind):
                return kind(value)
        return value

    return {key: plain(value) for key, value in vars(args).items()}


def records_up_to(metrics_path: Path, step: int, log=print) -> list[dict]:
    """The records of steps 1..``step`` in ``metrics_path``, the file cut back to them (atomically) if it held more.

    A run stopped between the record and the checkpoint left one more record, and a write cut short
    (a kill, a full disk) a last line that is not JSON: both are dropped, the second with a warning.
    Any other line that is not a record is a ``ValueError`` naming it. Null figures come back as NaN.
    """
    if not metrics_path.exists():
        if step:
            log(f"WARNING {metrics_path} is missing: the summary covers only the steps run from now on")
        return []
    lines = metrics_path.read_text(errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    kept, records, changed = [], [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a step record")
        except ValueError as e:
            if i == last:
                log(f"WARNING {metrics_path} line {i + 1} is cut short ({line[:40]!r}...): dropped")
                changed = True
                continue
            raise ValueError(f"--resume: {metrics_path} line {i + 1} is not a step record ({e}): {line[:80]!r}; "
                             f"repair or remove that line") from None
        if record["step"] > step:
            changed = True
            continue
        kept.append(line)
        records.append({k: float("nan") if v is None else v for k, v in record.items()})
    if [r["step"] for r in records] != list(range(1, step + 1)):
        log(f"WARNING {metrics_path} holds the records of steps {[r['step'] for r in records]}, not 1..{step}: "
            f"the summary covers those")
    if changed:  # atomically (rl.output_paths: a link keeps its link, its target is replaced)
        write_output("".join(line + "\n" for line in kept), metrics_path, "--out")
    return records


def drop_records_after(metrics_path: Path, step: int) -> None:
    """Cut ``metrics_path`` back to the records of steps up to ``step`` (``records_up_to``)."""
    records_up_to(metrics_path, step, log=lambda *_: None)
