"""rl.hf_config: an hf: model directory's config, code and memory, checked before any work."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from rl.hf_config import (  # noqa: E402
    TRAINING_BYTES_PER_PARAMETER,
    check_memory,
    estimate_training_bytes,
    read_hf_config,
    refuse_remote_code,
)
from rl.tiny_hf import write_tiny_llama  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> dict:
    path = write_tiny_llama(tmp_path_factory.mktemp("tiny"), tokenizer=False, vocab_size=16)
    return json.loads(path.read_text())


def _write(tmp_path, content) -> str:
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("change, match", [
    (lambda c: {k: v for k, v in c.items() if k != "model_type"}, 'no "model_type"'),
    (lambda c: {"added_tokens": [], "model": {"type": "BPE", "vocab": {}}}, "looks like a tokenizer file"),
    (lambda c: {**c, "model_type": "no-such-arch"}, "model_type 'no-such-arch' is not an architecture"),
    (lambda c: {**c, "num_attention_heads": 0}, "num_attention_heads must be a positive int, got 0"),
    (lambda c: [c], "a JSON list, expected an object"),
    (lambda c: {**c, "vocab_size": "16"}, "vocab_size"),
    (lambda c: {**c, "hidden_size": -32}, "hidden_size must be a positive int, got -32"),
    (lambda c: {**c, "hidden_size": 30}, "multiple of the number of attention heads (4)"),
    (lambda c: {**c, "num_key_value_heads": 3}, "must be a multiple of num_key_value_heads 3"),
    (lambda c: {**c, "num_hidden_layers": True}, "num_hidden_layers must be a positive int, got True"),
    (lambda c: "{not json", "not valid JSON"),
    (lambda c: "", "the file is empty"),
    (lambda c: "  \n", "the file is empty"),
])
def test_a_bad_config_is_one_error_naming_the_flag_and_the_file(tmp_path, tiny_config, change, match):
    path = _write(tmp_path, change(tiny_config))
    with pytest.raises(ValueError) as exc:
        read_hf_config(path, f"hf:{path}")
    assert str(exc.value).startswith(f"--model hf:{path}: {path}: ") and match in str(exc.value)


def test_a_good_config_reads_and_its_parameters_are_counted(tmp_path, tiny_config):
    import transformers as tf

    config, shape = read_hf_config(_write(tmp_path, tiny_config), "hf:x")
    model = tf.AutoModelForCausalLM.from_config(config)
    assert shape.parameters() == sum(p.numel() for p in model.parameters())
    total, params, activations = estimate_training_bytes(shape, sequences=4, length=16)
    assert params == shape.parameters() * TRAINING_BYTES_PER_PARAMETER and total == params + activations > params
    assert check_memory(shape, 4, 16, CPU, "hf:x", tmp_path) == total


@pytest.mark.parametrize("change, parameters", [
    ({"hidden_size": 40000, "intermediate_size": 80000}, "parameters"),
    ({"num_hidden_layers": 10**6}, "parameters"),
])
def test_a_model_that_cannot_fit_is_refused_with_the_estimate(tmp_path, tiny_config, change, parameters):
    path = _write(tmp_path, {**tiny_config, **change})
    _, shape = read_hf_config(path, "hf:x")
    with pytest.raises(ValueError, match=r"--model hf:x: .*training it needs at least [\d.e+]+ GiB .* more than the "
                                         r"[\d.e+]+ GiB available on cpu"):
        check_memory(shape, 4, 16, CPU, "hf:x", path)


def test_the_estimate_is_compared_with_what_is_available(tmp_path, tiny_config):
    _, shape = read_hf_config(_write(tmp_path, tiny_config), "hf:x")
    total, _, _ = estimate_training_bytes(shape, 4, 16)
    assert check_memory(shape, 4, 16, CPU, "hf:x", tmp_path, available=total) == total
    with pytest.raises(ValueError, match="more than the"):
        check_memory(shape, 4, 16, CPU, "hf:x", tmp_path, available=total - 1)


@pytest.mark.parametrize("name, auto_map", [
    ("tokenizer_config.json", {"AutoTokenizer": ["evil.EvilTok", None]}),
    ("config.json", {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}),
])
def test_a_directory_naming_its_own_code_is_refused(tmp_path, tiny_config, name, auto_map):
    _write(tmp_path, tiny_config)
    path = tmp_path / name
    raw = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**raw, "auto_map": auto_map}))
    with pytest.raises(ValueError, match=rf"--model hf:{tmp_path}: {path} names custom code in auto_map "
                                         rf"\(evil\.Evil.*trust_remote_code=False"):
        refuse_remote_code(tmp_path, f"hf:{tmp_path}")


def test_a_directory_without_auto_map_passes(tmp_path, tiny_config):
    _write(tmp_path, tiny_config)
    refuse_remote_code(tmp_path, "hf:x")


def test_model_identity_changes_with_the_config_the_weights_and_the_tokenizer(tmp_path):
    from rl.checkpoint import identity_conflicts
    from rl.hf import parse_model
    from rl.hf_config import model_identity

    config = write_tiny_llama(tmp_path / "m", tokenizer=True)
    spec = parse_model(f"hf:{config.parent}")
    first = model_identity(spec)
    assert first["weights"] is None and first["config"] and first["tokenizer"]
    raw = json.loads(config.read_text())
    config.write_text(json.dumps(raw, indent=4, sort_keys=True))  # the same data, spelt otherwise
    assert model_identity(spec) == first
    config.write_text(json.dumps({**raw, "rms_norm_eps": raw["rms_norm_eps"] * 10}))
    assert [c.split(" ")[1] for c in identity_conflicts(first, model_identity(spec))] == ["config"]
    config.write_text(json.dumps(raw))
    (config.parent / "model.safetensors").write_bytes(b"weights")
    assert [c.split(" ")[1] for c in identity_conflicts(first, model_identity(parse_model(f"hf:{config.parent}")))
            ] == ["weights"]


def test_smollm2_identity_names_its_layer_count():
    from rl import hf
    from rl.hf_config import model_identity

    try:
        gguf = hf.find_gguf()
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))
    two, three = (model_identity(hf.parse_model(f"smollm2:{n}"), gguf) for n in (2, 3))
    assert two["weights"] == three["weights"] and two["config"] != three["config"]


def test_every_transformers_load_in_rl_and_benchmarks_refuses_remote_code():
    """from_pretrained / from_config on an Auto class, or on a tokenizer, always with trust_remote_code=False."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    loads, missing = 0, []
    for path in sorted([*root.glob("rl/*.py"), *root.glob("benchmarks/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("from_pretrained", "from_config")
                    and "Auto" in ast.unparse(node.func.value)):
                continue
            loads += 1
            refused = [k for k in node.keywords if k.arg == "trust_remote_code"
                       and isinstance(k.value, ast.Constant) and k.value.value is False]
            if not refused:
                missing.append(f"{path.relative_to(root)}:{node.lineno}")
    assert loads >= 4 and not missing, f"loads without trust_remote_code=False: {missing}"
