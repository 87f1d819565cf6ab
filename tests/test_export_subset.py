"""The truncated SmolLM2 GGUF (benchmarks/export_subset.py): the source's blocks byte for byte, the same model.

In make test: a small synthetic GGUF cut in every way the tool cuts, and the real 2-layer
file against its source, tensor bytes and metadata read back with ``gguf.GGUFReader``. Behind
``slow`` (PK_SLOW=1): transformers loads the cut file to the same tensors as the full file
loaded and cut after. On a GPU: the carried cut file, under matched mode, generate() equals
the teacher-forced forward bitwise (on CPU tests/test_smollm2.py runs that check from the
installed package).
"""

from __future__ import annotations

import io
import os
import pathlib

import numpy as np
import pytest
import torch

import precision_kernels as pk
from benchmarks import export_subset
from rl import hf

SUBSET_DIR = pathlib.Path(__file__).resolve().parents[1] / export_subset.DEFAULT_OUT
LAYERS = 2
SLOW = pytest.mark.skipif(not os.environ.get("PK_SLOW"), reason="two transformers loads (~30 s each): PK_SLOW=1")


def _gguf():
    return pytest.importorskip("gguf", reason="the gguf package reads and writes the file: " + hf.INSTALL_HINT)


def _parts(field) -> list[bytes]:
    return [bytes(np.ascontiguousarray(p).view(np.uint8)) for p in field.parts]


def _tensor_bytes(t) -> bytes:
    return bytes(np.ascontiguousarray(t.data).view(np.uint8))


def _assert_cut(src, out, layers: int, block_key: str) -> None:
    """``out`` holds ``src``'s metadata with ``block_key`` = layers, and its non-block tensors and blocks < layers."""
    expected = [t for t in src.tensors if not t.name.startswith("blk.") or int(t.name.split(".")[1]) < layers]
    assert [t.name for t in out.tensors] == [t.name for t in expected]
    for a, b in zip(expected, out.tensors):
        assert b.tensor_type == a.tensor_type and list(b.shape) == list(a.shape), a.name
        assert _tensor_bytes(b) == _tensor_bytes(a), a.name
    assert set(out.fields) == set(src.fields)
    for name, field in src.fields.items():
        if name not in ("GGUF.tensor_count", block_key):
            assert out.fields[name].types == field.types and _parts(out.fields[name]) == _parts(field), name
    assert out.fields[block_key].contents() == layers
    assert out.fields["GGUF.tensor_count"].contents() == len(expected)


@pytest.fixture
def tiny_gguf(tmp_path):
    """A 3-layer llama-shaped GGUF with a Q8_0 embedding, F32 blocks, an F16 norm and string metadata."""
    gguf = _gguf()
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_block_count(3)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    w.add_float32("llama.rope.freq_base", 10000.0)
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", gguf.quants.quantize(rng.standard_normal((3, 64), dtype=np.float32),
                                                           gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    for i in range(3):
        w.add_tensor(f"blk.{i}.attn_q.weight", np.full((2, 4), i + 0.5, np.float32))
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.full(4, -i, np.float32))
    w.add_tensor("output_norm.weight", np.ones(4, np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_tiny_cut(tiny_gguf, tmp_path, layers):
    gguf = _gguf()
    path = export_subset.export_subset(layers, tmp_path / "out", str(tiny_gguf))
    assert path.name == f"tiny.{layers}-layers.gguf" and not list(path.parent.glob("*.part"))
    src, out = gguf.GGUFReader(tiny_gguf), gguf.GGUFReader(path)
    _assert_cut(src, out, layers, "llama.block_count")
    assert [t.name for t in out.tensors][-1] == "output_norm.weight" and out.tensors[0].tensor_type.name == "Q8_0"
    assert sum(t.name.startswith("blk.") for t in out.tensors) == 2 * layers


def test_kept_tensor_names():
    assert export_subset.kept_tensor("token_embd.weight", 2) and export_subset.kept_tensor("output.weight", 2)
    assert export_subset.kept_tensor("blk.1.attn_q.weight", 2)
    assert not export_subset.kept_tensor("blk.2.attn_q.weight", 2)
    assert not export_subset.kept_tensor("blk.10.ffn_up.weight", 2)
    assert export_subset.kept_tensor("blk.10.ffn_up.weight", 11)


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": 0}, "layers must be a positive int"),
    ({"layers": True}, "layers must be a positive int"),
    ({"layers": 2, "source": "no/such/file.gguf"}, "source must name an existing .gguf"),
])
def test_bad_arguments_are_named(kwargs, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export_subset.export_subset(out_dir=tmp_path, **kwargs)


def test_more_layers_than_the_source_is_refused(tiny_gguf, tmp_path):
    with pytest.raises(ValueError, match="layers must be at most the source's 3 layers, got 4"):
        export_subset.export_subset(4, tmp_path, str(tiny_gguf))


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """The real 2-layer cut: (source path, cut path, source reader, cut reader)."""
    gguf = _gguf()
    try:
        source = hf.find_gguf()
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))
    path = export_subset.export_subset(LAYERS, tmp_path_factory.mktemp("subset"))
    return source, path, gguf.GGUFReader(source), gguf.GGUFReader(path)


def test_real_cut_keeps_the_source_blocks_and_metadata(cut):
    source, path, src, out = cut
    assert src.fields["llama.block_count"].contents() == hf.FULL_LAYERS
    assert any(t.name.startswith(f"blk.{LAYERS}.") for t in src.tensors)
    _assert_cut(src, out, LAYERS, "llama.block_count")
    names = {t.name for t in out.tensors}
    assert {"token_embd.weight", "output_norm.weight", f"blk.{LAYERS - 1}.attn_q.weight"} <= names
    assert out.tensors[0].tensor_type.name == "Q8_0"       # the embedding stays quantised
    assert path.stat().st_size < 40 * 2**20                # carried to a GPU machine beside the tree


@SLOW
@pytest.mark.slow
def test_cut_loads_to_the_full_models_first_layers(cut):
    """transformers reads the cut file to the tensors of the full file loaded whole and cut after."""
    pytest.importorskip("transformers")
    source, path, _, _ = cut
    cut_model, cut_tok = hf.load_smollm2(path=path)
    full_model, full_tok = hf.load_smollm2(path=source)
    assert len(cut_model.model.layers) == LAYERS and len(full_model.model.layers) == hf.FULL_LAYERS
    full = full_model.state_dict()
    kept = {k: v for k, v in full.items() if not k.startswith("model.layers.") or int(k.split(".")[2]) < LAYERS}
    got = cut_model.state_dict()
    assert got.keys() == kept.keys()
    for k, v in kept.items():
        assert torch.equal(got[k], v), k
    assert cut_tok.get_vocab() == full_tok.get_vocab()


@pytest.mark.gpu
@pytest.mark.skipif(pk.backend.INTERPRETED, reason="GPU-only: on CPU tests/test_smollm2.py runs this check from "
                                                   "the installed package")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_carried_cut_generate_equals_forward_bitwise(dtype):
    """The exported cut the GPU check carries (runs/smollm2_subset), real weights under matched mode."""
    files = sorted(SUBSET_DIR.glob(f"*.{LAYERS}-layers.gguf"))
    if not files:
        pytest.skip(f"no exported cut in {SUBSET_DIR}: run `python -m benchmarks.export_subset` and carry the folder")
    pytest.importorskip("transformers")
    pytest.importorskip("gguf", reason="carry the gguf wheel (docs/GPU_CHECK.md)")
    model, tokenizer = hf.load_smollm2(dtype=dtype, path=files[0])
    ids, mask = hf.encode_prompts(tokenizer, ("The capital of France is", "Water boils at",
                                              "Once upon a time, in a small village,"))
    assert (mask == 0).any(), "prompts must be left-padded"
    with pk.matched_mode(audit=True) as report:
        s = hf.sample(model, ids, mask, 8, seed=0)
        learner = hf.score(model, s["tokens"], s["attention_mask"], s["prompt_len"], s["response_mask"])
    assert s["response_mask"].all() and torch.isfinite(s["logp"]).all()
    assert torch.equal(s["logp"].view(torch.int32), learner.view(torch.int32)), (s["logp"] - learner).abs().max()
    assert not report.uncovered, report.summary()


def _damaged_copies(path: pathlib.Path):
    """``path`` cut short at every byte of its header and a sample of its data, and each header byte flipped."""
    from rl.gguf_check import read_gguf_header

    data = path.read_bytes()
    header = read_gguf_header(path)
    header_end = len(data) - sum(nbytes for *_, nbytes in header.tensors.values())
    for n in [*range(header_end), *range(header_end, len(data), 97)]:
        yield f"cut at {n}", data[:n]
    for i in range(header_end):
        yield f"byte {i} flipped", data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]


def test_a_damaged_gguf_is_one_error_naming_the_file(tiny_gguf, tmp_path):
    """Every cut and every flipped header byte: a GGUFFileError naming the file, or a header that reads in full."""
    gguf = _gguf()
    from rl.gguf_check import GGUFFileError, read_gguf_header, read_gguf_header_from

    bad = tmp_path / "bad.gguf"
    refused, passed = 0, 0
    names = read_gguf_header(tiny_gguf).tensors.keys()
    for what, data in _damaged_copies(tiny_gguf):
        try:
            header = read_gguf_header_from(io.BytesIO(data), bad)  # a file each would cost ~3 ms to write
        except GGUFFileError as e:
            assert str(e).startswith(f"{bad}: not a readable GGUF file: "), (what, str(e))
            refused += 1
            continue
        # What the check lets through (a flipped byte inside a number) the real reader reads too; every
        # tenth such file is read, the reader costing ~5 ms.
        assert header.tensors.keys() == names, what
        if passed % 10 == 0:
            bad.write_bytes(data)
            gguf.GGUFReader(bad)
        passed += 1
    assert refused > 0


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_export_subset_names_a_damaged_source(tiny_gguf, tmp_path, capsys, damage):
    data = tiny_gguf.read_bytes()
    bad = tmp_path / "bad.gguf"
    # Cut inside the metadata, or a string length in it set to 2**40.
    bad.write_bytes(data[:100] if damage == "truncated" else data[:24] + (1 << 40).to_bytes(8, "little") + data[32:])
    with pytest.raises(SystemExit) as exc:
        export_subset.main(["--source", str(bad), "--out", str(tmp_path / "out"), "--layers", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"{bad}: not a readable GGUF file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_export_subset_out_must_be_a_folder(tiny_gguf, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    for out, match in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "sub", "cannot create the folder")):
        with pytest.raises(SystemExit) as exc:
            export_subset.main(["--source", str(tiny_gguf), "--out", str(out), "--layers", "1"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"--out {out}" in err and match in err
    assert (tmp_path / "file").read_text() == "x"


def test_export_subset_creates_a_missing_folder_and_refuses_an_existing_cut_unless_forced(tiny_gguf, tmp_path,
                                                                                          capsys):
    out = tmp_path / "new" / "deeper"
    path = export_subset.export_subset(1, out, str(tiny_gguf))
    first = path.read_bytes()
    path.write_bytes(b"someone's file")
    with pytest.raises(SystemExit) as exc:
        export_subset.main(["--source", str(tiny_gguf), "--out", str(out), "--layers", "1"])
    assert exc.value.code == 2 and "--force" in capsys.readouterr().err and path.read_bytes() == b"someone's file"
    assert export_subset.main(["--source", str(tiny_gguf), "--out", str(out), "--layers", "1", "--force"]) == 0
    assert path.read_bytes() == first and sorted(p.name for p in out.iterdir()) == [path.name]
