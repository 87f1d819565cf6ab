"""The benchmarks' output files: checked and created before any measuring, written atomically, valid JSON.

``prepare_json_path(path)`` (and ``prepare_output_path`` for a plot) runs before the measurement:
it creates the file's directory and checks that a file can be written there, so a bad path fails
in a second, not after a long run. ``write_json(obj, path)`` writes atomically (a temporary file in
the same directory, then ``os.replace``), so a long run can write its report after each section and
a reader never sees half a file. JSON has no NaN or Infinity: a figure that is not finite is written
as null (``rl.metrics.json_safe``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rl.metrics import json_safe


class OutputPathError(ValueError):
    """An output path that cannot be written: its directory cannot be created, or is not writable."""


def prepare_output_path(path: str | os.PathLike | None, flag: str = "--json") -> Path | None:
    """Create ``path``'s directory and check that a file can be written there; None or "" (no file) pass through.

    Raises ``OutputPathError`` naming ``flag`` when the path names a directory, the directory cannot
    be created (a parent is a file, no permission) or no file can be created in it.
    """
    if path is None or path == "":
        return None
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: names a directory, not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A real write (then removed), not os.access: it also sees a read-only filesystem and root's limits.
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return path


def prepare_json_path(path: str | os.PathLike | None, flag: str = "--json") -> Path | None:
    """``prepare_output_path`` for a JSON report (the benchmarks' ``--json``)."""
    return prepare_output_path(path, flag)


def dumps_json(obj) -> str:
    """``obj`` as indented JSON, every non-finite float as null (strict JSON, ``allow_nan=False``)."""
    return json.dumps(json_safe(obj), indent=1, allow_nan=False)


def write_json(obj, path: str | os.PathLike) -> Path:
    """Write ``dumps_json(obj)`` to ``path`` atomically: a temporary file beside it, then ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps_json(obj) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
