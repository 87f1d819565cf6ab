"""A GGUF file's header read and checked in full before anything else reads the file.

``gguf.GGUFReader`` and transformers' GGUF loader trust the header: a file cut short or with a
corrupted byte fails deep inside them as ``struct.error``, ``IndexError``, ``ValueError: cannot
reshape`` or ``UnicodeDecodeError`` (from a token string decoded much later), none naming the file.
``read_gguf_header(path)`` walks the whole header (GGUF versions 1 to 3, either byte order)
and checks every length, type and string, that the tensors' data lie inside the file, and raises
one ``GGUFFileError`` naming the file and the first thing wrong. It reads the header only, in
tens of milliseconds for the 93 MB SmolLM2 file (the vocabulary's 49,152 strings included).
"""

from __future__ import annotations

import math
import os
import pathlib
import struct
from dataclasses import dataclass, field
from typing import BinaryIO

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF value types: their struct codes (8 is a string, 9 an array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
# A header field longer than this is damage, not data (the largest real ones are a few MB of vocabulary).
_MAX_HEADER_ITEMS = 1 << 24
_MAX_DIMS = 8


class GGUFFileError(ValueError):
    """A file that is not a readable GGUF: cut short, corrupted, or not GGUF at all; the message names it."""


@dataclass
class GGUFHeader:
    """What a checked header holds: ``metadata`` (key -> value; an array as a list) and ``tensors``
    (name -> (shape as stored, ggml type id, data offset, bytes))."""

    path: pathlib.Path
    version: int
    byte_order: str
    metadata: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)


class _Cursor:
    def __init__(self, f, size: int, order: str):
        self.f, self.size, self.order = f, size, order

    def read(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise GGUFFileError(f"the file ends inside {what} (at byte {self.f.tell()} of {self.size})")
        return data

    def unpack(self, code: str, what: str):
        return struct.unpack(self.order + code, self.read(struct.calcsize(code), what))[0]

    def count(self, what: str, limit: int = _MAX_HEADER_ITEMS) -> int:
        n = self.unpack("Q", what)
        if n > limit or n > self.size:
            raise GGUFFileError(f"{what} is {n}, more than the file could hold (corrupted?)")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"the length of {what}")
        raw = self.read(n, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFileError(f"{what} is not UTF-8 text ({e.reason} at byte {e.start}; corrupted?)") from None

    def value(self, vtype: int, what: str):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            item_type = self.unpack("I", f"the item type of {what}")
            if item_type == _ARRAY or (item_type not in _SCALARS and item_type != _STRING):
                raise GGUFFileError(f"{what} is an array of unknown type {item_type} (corrupted?)")
            n = self.count(f"the length of {what}")
            if item_type in _SCALARS:
                code = _SCALARS[item_type]
                raw = self.read(n * struct.calcsize(code), what)
                return list(struct.unpack(f"{self.order}{n}{code}", raw))
            return [self.string(f"item {i} of {what}") for i in range(n)]
        raise GGUFFileError(f"{what} has unknown value type {vtype} (corrupted?)")


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise GGUFFileError(f"tensor {name!r} has unknown type {ggml_type} (corrupted?)") from None
    elements = math.prod(shape)
    if shape and shape[0] % block:
        raise GGUFFileError(f"tensor {name!r}: its rows of {shape[0]} are not whole blocks of {block} (corrupted?)")
    return elements // block * type_size


def read_gguf_header(path: str | os.PathLike) -> GGUFHeader:
    """Read and check ``path``'s GGUF header; ``GGUFFileError`` naming the file if anything in it is wrong."""
    path = pathlib.Path(path)
    try:
        with open(path, "rb") as f:
            return read_gguf_header_from(f, path)
    except OSError as e:
        raise GGUFFileError(f"{path}: cannot read it ({e.strerror or e})") from None


def read_gguf_header_from(f: BinaryIO, path: str | os.PathLike) -> GGUFHeader:
    """``read_gguf_header`` of an open binary file ``f`` (at its start), named ``path`` in errors."""
    path = pathlib.Path(path)
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    try:
        return _read(f, path, size)
    except GGUFFileError as e:
        raise GGUFFileError(f"{path}: not a readable GGUF file: {e}") from None


def _read(f, path: pathlib.Path, size: int) -> GGUFHeader:
    magic = f.read(4)
    if magic != MAGIC:
        raise GGUFFileError(f"it starts with {magic!r}, not the GGUF magic {MAGIC!r}")
    raw_version = f.read(4)
    if len(raw_version) != 4:
        raise GGUFFileError("the file ends inside the version")
    # The version is small: whichever byte order reads it as 1..3 is the file's.
    order = next((o for o in "<>" if struct.unpack(o + "I", raw_version)[0] in (1, 2, 3)), None)
    if order is None:
        raise GGUFFileError(f"unknown GGUF version {struct.unpack('<I', raw_version)[0]} (corrupted?)")
    version = struct.unpack(order + "I", raw_version)[0]
    cur = _Cursor(f, size, order)
    if version == 1:  # version 1's counts are 32-bit
        n_tensors, n_kv = cur.unpack("I", "the tensor count"), cur.unpack("I", "the metadata count")
    else:
        n_tensors, n_kv = cur.count("the tensor count"), cur.count("the metadata count")
    header = GGUFHeader(path, version, "little" if order == "<" else "big")
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        if key in header.metadata:
            raise GGUFFileError(f"metadata key {key!r} appears twice (corrupted?)")
        header.metadata[key] = cur.value(cur.unpack("I", f"the type of {key!r}"), f"metadata {key!r}")
    alignment = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFileError(f"general.alignment is {alignment!r}, not a power of two (corrupted?)")
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}")
        n_dims = cur.unpack("I", f"the rank of tensor {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFFileError(f"tensor {name!r} has rank {n_dims} (corrupted?)")
        shape = tuple(cur.unpack("Q", f"the shape of tensor {name!r}") for _ in range(n_dims))
        ggml_type = cur.unpack("I", f"the type of tensor {name!r}")
        offset = cur.unpack("Q", f"the data offset of tensor {name!r}")
        if name in header.tensors:
            raise GGUFFileError(f"tensor {name!r} appears twice (corrupted?)")
        if any(d == 0 or d > size * 64 for d in shape):
            raise GGUFFileError(f"tensor {name!r} has shape {list(shape)} (corrupted?)")
        header.tensors[name] = (shape, ggml_type, offset, _tensor_nbytes(name, shape, ggml_type))
    data_start = -(-f.tell() // alignment) * alignment
    for name, (_, _, offset, nbytes) in header.tensors.items():
        start = data_start + offset
        if start + nbytes > size:
            raise GGUFFileError(f"tensor {name!r}'s data (bytes {start} to {start + nbytes}) lie past the end "
                                f"of the file ({size} bytes): cut short?")
    return header
