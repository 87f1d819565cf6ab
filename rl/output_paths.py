"""Output files (reports, plots, checkpoints, metrics) that never replace what is not a regular file.

One rule for every output path in ``rl/`` and ``benchmarks/``:

* a regular file, or a path where nothing is yet: written atomically: a temporary file in the
  same directory, flushed and fsync'ed, then ``os.replace``d onto the path, so a reader or a crash
  never sees half a file and the old file stays whole until the new one is complete;
* a symbolic link: followed; its final target is written by this rule, and the link stays a link;
* anything else that exists (a character device such as ``/dev/null``, a FIFO, a socket, a
  terminal), or a path that reaches a file through ``/proc`` (``/dev/stdout``, ``/dev/fd/N``):
  written in place, never replaced or truncated: one of this process's own descriptors through
  that descriptor (``--json /dev/stdout`` with stdout redirected to a file continues after
  what was printed), anything else opened for appending;
* a directory: refused, with ``OutputPathError`` naming the flag.

``check_output_path`` applies the same rule before a run starts, so a path that cannot be
written fails in a second, not after the work; ``replace=False`` refuses an existing regular file.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class OutputPathError(ValueError):
    """An output path that cannot be written: a directory, a directory that cannot be created, no permission."""


class OutputExistsError(OutputPathError):
    """``check_output_path(replace=False)`` found a regular file where the output would go."""


_MAX_LINKS = 40  # the kernel's own limit on a chain of symbolic links


def _proc_hops(path: Path) -> Iterator[str]:
    """``path`` and each link it leads to in turn, each with its directory resolved."""
    current = os.path.abspath(path)
    for _ in range(_MAX_LINKS):
        current = os.path.join(os.path.realpath(os.path.dirname(current)), os.path.basename(current))
        yield current
        if not os.path.islink(current):
            return
        current = os.path.join(os.path.dirname(current), os.readlink(current))


def _via_proc(path: Path) -> bool:
    """Whether ``path`` or a link it passes through lies under /proc: a process's open file, not a name to replace."""
    return any(hop == "/proc" or hop.startswith("/proc/") for hop in _proc_hops(path))


def _own_descriptor(path: Path) -> int | None:
    """The descriptor N when ``path`` reaches this process's /proc/PID/fd/N (``/dev/stdout``, ``/dev/fd/N``)."""
    own = re.compile(rf"/proc/{os.getpid()}(?:/task/\d+)?/fd/(\d+)")
    for hop in _proc_hops(path):
        match = own.fullmatch(hop)
        if match:
            return int(match.group(1))
    return None


def output_target(path: str | os.PathLike, flag: str = "path") -> tuple[Path, bool]:
    """Where a write of ``path`` goes and how: ``(target, in_place)`` (module doc).

    ``in_place`` True: ``path`` itself, opened for appending; False: ``target`` (``path`` with
    every symbolic link resolved) replaced atomically.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # follows links: what a write would reach
    except FileNotFoundError:
        mode = None  # nothing there yet, or a link to nothing
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot reach it ({e.strerror or e})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputPathError(f"{flag} {path}: names a directory, not a file")
    if (mode is not None and not stat.S_ISREG(mode)) or _via_proc(path):
        return path, True
    return Path(os.path.realpath(path)), False


def check_output_path(path: str | os.PathLike | None, flag: str = "--json", *,
                      replace: bool = True) -> Path | None:
    """Check before any work that ``path`` can be written by ``open_output``; None or "" (no file) pass through.

    Creates the directory of the file a write would create (for a link, its target's) and
    writes a probe file there, so a read-only filesystem or a missing permission shows now.
    ``replace=False`` refuses an existing regular file (through links too) with
    ``OutputExistsError``. Raises ``OutputPathError`` naming ``flag``.
    """
    if path is None or path == "":
        return None
    target, in_place = output_target(path, flag)
    if in_place:
        if not os.access(target, os.W_OK):
            raise OutputPathError(f"{flag} {path}: not writable")
        return Path(path)
    if not replace and target.exists():
        where = "" if target == Path(path).absolute() else f" (a link to {target})"
        raise OutputExistsError(f"{flag} {path}: a file is already there{where}; not replacing it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # A real write (then removed), not os.access: it also sees a read-only filesystem and root's limits.
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot write there ({e.strerror or e})") from None
    return Path(path)


def _creation_mode() -> int:
    """0666 less the umask: the mode ``open()`` would give a new file (reading the umask sets it back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_prefix(target: Path) -> str:
    """The name prefix of ``open_output``'s temporary files for ``target`` (hidden, beside it)."""
    return f".{target.name}."


@contextlib.contextmanager
def open_output(path: str | os.PathLike, flag: str = "path") -> Iterator[BinaryIO]:
    """A binary file to write ``path``'s new contents to, committed by the module doc's rule when the block ends.

    An exception in the block leaves the old file as it was and no temporary file behind (in
    place, what was written stays written: a device or a pipe cannot take it back).
    """
    target, in_place = output_target(path, flag)
    if in_place:
        # What this process printed must come out before what it writes to its own stdout/stderr.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        # The process's own descriptor is written through itself: a second opening of its file would
        # write at another offset than the descriptor's next write (a shell's `> log` has no O_APPEND).
        fd = _own_descriptor(target)
        with (os.fdopen(os.dup(fd), "wb") if fd is not None else open(target, "ab")) as f:
            yield f
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, _creation_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            e.filename = str(target)  # a write into the open file (a full disk) names no file of its own
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not every filesystem allows it
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_output(data: bytes | str, path: str | os.PathLike, flag: str = "path") -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` by the module doc's rule; returns ``path``."""
    if isinstance(data, str):
        data = data.encode()
    with open_output(path, flag) as f:
        f.write(data)
    return Path(path)
