"""The benchmarks' output files: checked before any measuring, written by ``rl.output_paths``' rule, valid JSON.

``prepare_json_path(path)`` (and ``prepare_output_path`` for a plot) runs before the measurement:
it creates the file's directory and checks that a file can be written there, so a bad path fails
in a second, not after a long run. ``write_json(obj, path)`` and ``write_figure(fig, path)`` write
by ``rl.output_paths``' rule: a regular file atomically (a temporary file beside it, then
``os.replace``, so a long run can write its report after each section and a reader never sees half
a file); a link's target the same way, the link kept; a device, FIFO or ``/dev/stdout`` in place,
never replaced. JSON has no NaN or Infinity: a figure that is not finite is written as null
(``rl.metrics.json_safe``).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from rl.metrics import json_safe
from rl.output_paths import OutputExistsError, OutputPathError, check_output_path, write_output

__all__ = ["OutputExistsError", "OutputPathError", "dumps_json", "prepare_json_path", "prepare_output_path",
           "write_figure", "write_json"]


def prepare_output_path(path: str | os.PathLike | None, flag: str = "--json", *,
                        replace: bool = True) -> Path | None:
    """Create ``path``'s directory and check that a file can be written there; None or "" (no file) pass through.

    Raises ``OutputPathError`` naming ``flag`` when the path names a directory, the directory cannot
    be created (a parent is a file, no permission) or no file can be created in it; with
    ``replace=False``, also when a regular file is already there.
    """
    return check_output_path(path, flag, replace=replace)


def prepare_json_path(path: str | os.PathLike | None, flag: str = "--json", *,
                      replace: bool = True) -> Path | None:
    """``prepare_output_path`` for a JSON report (the benchmarks' ``--json``)."""
    return prepare_output_path(path, flag, replace=replace)


def dumps_json(obj) -> str:
    """``obj`` as indented JSON, every non-finite float as null (strict JSON, ``allow_nan=False``)."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False)


def write_json(obj, path: str | os.PathLike, flag: str = "--json") -> Path:
    """Write ``dumps_json(obj)`` to ``path`` (a regular file atomically; ``rl.output_paths``' rule)."""
    return write_output(dumps_json(obj) + "\n", path, flag)


def write_figure(fig, path: str | os.PathLike, flag: str = "--png", **savefig_kwargs) -> Path:
    """A matplotlib figure to ``path`` by the same rule as ``write_json``; the format follows the suffix
    (png when there is none)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix[1:].lower() or "png", **savefig_kwargs)
    return write_output(buffer.getvalue(), path, flag)
