"""rl.train on a Hugging Face causal LM (rl.hf_policy): ``--model hf:PATH`` and ``--model smollm2[:N]``.

In make test: random-init tiny Llamas from configs written here (rl.tiny_hf), one with a
character tokenizer and a chat template, one without (the task's own ids). Left-padded prompts
of different lengths: the KV-cache sampler's log-probs equal the learner's bitwise in
fp32/fp16/bf16, and a batch sampled in pieces equals the whole; the engine profile differs in
bf16; the embedding backward is served under the mode; the flags that do not apply are refused;
``rl.train`` runs with zero matched mismatch (``--strict``), differs under ``--profile engine``
and resumes bit for bit; the ``paren`` task's rewards; a reduced ``smollm2:2`` run (on ``paren``, two
steps against one and a resume) resumes bit for bit. Behind ``slow`` (PK_SLOW=1): the same runs
on ``smollm2:2`` in full (on ``paren``: its 2-layer cut earns nothing on ``add1``, so no weight would
move) and SmolLM2-135M-Instruct's greedy accuracy on ``add1`` before any RL.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import precision_kernels as pk
import rl.train
from rl import hf, hf_policy
from rl.learner import sequence_logprobs
from rl.sampler import generate
from rl.task_views import PromptSet, TextTask
from rl.tasks import AddInWords, ParenthesesInWords
from rl.tiny_hf import write_tiny_llama
from rl.train import build_parser, main, train

pytest.importorskip("transformers")

SLOW = pytest.mark.skipif(not os.environ.get("PK_SLOW"),
                          reason="a slow real-model case or full form (tens of seconds up); PK_SLOW=1 runs it")
DEV = pk.backend.device()
TEXTS = ("ab", "hello world", "x", "abcdefg")  # four lengths: three rows are left-padded
# Not compared between a run and its resumed twin: timings, and the evaluation every run's last step makes.
UNSHARED = ("sample_s", "learn_s", "accuracy", "evaluated")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """One layer (an interpreter launch costs tens of ms; a pass is about 15 of them), the character tokenizer."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", layers=1).parent


@pytest.fixture(scope="module")
def ids_config(tmp_path_factory):
    """One layer, vocab 16, no tokenizer: the synthetic tasks' ids, so a random policy earns some reward."""
    return write_tiny_llama(tmp_path_factory.mktemp("tiny_ids"), layers=1, tokenizer=False, vocab_size=16,
                            init_std=0.02)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return hf.load_model(hf.parse_model(f"hf:{tiny_dir}"), 0, DEV)


def _padded(tokenizer, texts=TEXTS) -> PromptSet:
    rows = [tokenizer(t)["input_ids"] for t in texts]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=DEV)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=DEV)
    return PromptSet(ids, mask)


def _sample(policy, prompts, profile="matched", first_index=0, n=3):
    return generate(policy, prompts.ids, n, temperature=1.0, seed=11, first_index=first_index, profile=profile,
                    eos_id=2, pad_id=2, prompt_mask=prompts.mask)


def _score(policy, rollout, prompts):
    with pk.matched_mode():
        return sequence_logprobs(policy, rollout.tokens, prompts.ids.shape[1], 1.0, prompt_mask=prompts.mask)


# --- the sampler and the learner on one layout ------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_left_padded_sampler_log_probs_equal_the_learners_bitwise(tiny, precision):
    model, tokenizer = tiny
    policy = hf_policy.HFPolicy(model, precision)
    prompts = _padded(tokenizer)
    assert (prompts.mask == 0).any() and prompts.mask[:, -1].all()
    ro = _sample(policy, prompts)
    assert ro.mask[:, 0].all() and torch.isfinite(ro.logprobs[ro.mask]).all()
    learner = _score(policy, ro, prompts)
    assert torch.equal(bits(learner[ro.mask]), bits(ro.logprobs[ro.mask]))
    if precision != "bf16":
        return
    # Scored without the prompt mask (pads attended, positions shifted), the padded rows differ: the layout matters.
    with pk.matched_mode():
        unmasked = sequence_logprobs(policy, ro.tokens, prompts.ids.shape[1], 1.0)
    assert not torch.equal(bits(unmasked[:3][ro.mask[:3]]), bits(ro.logprobs[:3][ro.mask[:3]]))
    # Keyed seeds (global index, position) and batch-invariant kernels: the batch sampled in two pieces is the whole.
    halves = [_sample(policy, prompts[lo:lo + 2], first_index=lo) for lo in (0, 2)]
    assert torch.equal(torch.cat([h.tokens for h in halves]), ro.tokens)
    assert torch.equal(bits(torch.cat([h.logprobs for h in halves])), bits(ro.logprobs))


def test_an_hf_policy_refuses_fp8_linears(tiny):
    """FP8 linears are TinyGPT's: the HF policy names the argument rather than rounding to its precision."""
    with pytest.raises(ValueError, match="linear_precision"):
        hf_policy.HFPolicy(tiny[0], "bf16").compute_weights("fp8")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_sdpa_samples_a_left_padded_row_as_its_prompt_alone(tiny_dir, attention):
    """Why rl.train loads SDPA: served by pk.attention, a row's samples and log-probs in a left-padded batch are
    those of its prompt alone, bit for bit; eager's softmax runs over the padded row, so its padded rows differ.
    Prompts of 69 to 162 tokens span several of the interpreter's key blocks, so padding moves the block edges."""
    model, tokenizer = hf.load_model(hf.parse_model(f"hf:{tiny_dir}"), 0, DEV, attn_implementation=attention)
    policy = hf_policy.HFPolicy(model, "fp32")
    texts = ("a" * 139, "b" * 162, "c" * 69)               # the longest is unpadded: equal under either form
    batch = _sample(policy, _padded(tokenizer, texts))
    alone = [_sample(policy, _padded(tokenizer, (t,)), first_index=i) for i, t in enumerate(texts)]
    same = [torch.equal(a.tokens[0, -3:], batch.tokens[i, -3:]) and torch.equal(bits(a.logprobs[0]),
                                                                                bits(batch.logprobs[i]))
            for i, a in enumerate(alone)]
    assert same == ([True] * 3 if attention == "sdpa" else [False, True, False])


def test_eager_attention_stays_an_option(tmp_path, ids_config):
    """--attention eager: the run is matched too (no mismatch, --strict), and its summary says which form ran."""
    args = _args(tmp_path / "eager", f"hf:{ids_config}", "--task", "add", "--strict", "--attention", "eager")
    args.steps = 1
    summary = train(args, log=lambda *_: None)
    assert summary["config"]["attention"] == "eager" and summary["frac_tokens_differ"] == 0
    assert _records(tmp_path / "eager")[0]["n_tokens"] > 0


def test_the_prompt_set_is_the_chat_template_left_padded(tiny):
    model, tokenizer = tiny
    task = TextTask("add1", tokenizer)
    prompts = task.prompt_set(5, seed=3, device=DEV)
    problems = AddInWords().text_problems(5, seed=3)
    assert prompts.answers == [answer for _, answer in problems]
    for row, mask, (chat, _) in zip(prompts.ids, prompts.mask, problems):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(row[mask.bool()]) == text and mask[-1] == 1
    assert task.eos_id == task.pad_id == 2


def test_text_rewards_decode_up_to_eos(tiny):
    _, tokenizer = tiny
    task = TextTask("add1", tokenizer)
    prompts = PromptSet(torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1, dtype=torch.long),
                                  ["8", "8", "8"])
    responses = torch.tensor([tokenizer(s)["input_ids"] + [2] for s in ("It is 8", "It is 8", "8 or 9!")])
    mask = torch.ones_like(responses, dtype=torch.bool)
    mask[1, -1] = False                                    # row 1 never sampled its EOS: it did not stop
    assert task.reward(prompts, responses, mask, partial=True).tolist() == [1.0, 0.0, 0.0]
    reverse = TextTask("reverse", tokenizer)
    prompts.answers = ["123456"] * 3
    responses = torch.tensor([tokenizer(s)["input_ids"] + [2] for s in ("123456  ", "123000  ", " 123456 ")])
    got = reverse.reward(prompts, responses, torch.ones_like(responses, dtype=torch.bool), partial=True)
    assert torch.equal(got, torch.tensor([1.0, 4 / 7, 1.0]))                 # 3 digits and the stop of 7 wrong


def test_the_embedding_backward_is_served_in_a_fixed_order():
    g = torch.Generator().manual_seed(0)
    grad = torch.randn(3, 7, 8, generator=g).to(DEV)
    idx = torch.tensor([[1, 4, 1, 0, 4, 4, 2], [3, 1, 1, 5, 4, 0, 0], [4, 2, 4, 1, 6, 1, 4]], device=DEV)
    args = (grad, idx, 9, 0, False)
    with pk.matched_mode(audit=True) as report:
        dw = torch.ops.aten.embedding_dense_backward(*args)
    assert report.served["embedding_dense_backward.default"] == 1 and not report.uncovered
    want = torch.zeros(9, 8, dtype=torch.float64).index_add_(0, idx.reshape(-1).cpu(),
                                                             grad.reshape(-1, 8).double().cpu())
    want[0] = 0.0                                          # padding_idx gets no gradient
    assert (dw.double().cpu() - want).abs().max() < 1e-5 and dw.dtype == torch.float32
    # Moving another token's positions changes no bit of token 4's row; every row is the same fp32 sum.
    flat, rows = idx.reshape(-1).clone(), grad.reshape(-1, 8).clone()
    swap = torch.tensor([0, 3])                            # positions 0 and 3 hold tokens 1 and 0
    flat[swap], rows[swap] = flat[swap.flip(0)], rows[swap.flip(0)]
    with pk.matched_mode():
        moved = torch.ops.aten.embedding_dense_backward(rows.reshape(3, 7, 8), flat.reshape(3, 7), 9, 0, False)
    assert torch.equal(bits(moved[4]), bits(dw[4])) and torch.equal(bits(moved), bits(dw))
    with pk.matched_mode(audit=True) as report:
        torch.ops.aten.embedding_dense_backward(grad.half(), idx, 9, -1, True)   # declined: torch runs it
    assert any(r.op == "embedding_dense_backward.default" for r in report.uncovered.values())


# --- the CLI -------------------------------------------------------------------------------


def test_flags_that_do_not_apply_to_an_hf_model_are_refused(tmp_path, capsys, ids_config, tiny_dir):
    small = write_tiny_llama(tmp_path / "small", tokenizer=False, vocab_size=8)
    cases = [
        (["--model", "gpt5"], "--model"), (["--model", "smollm2:0"], "--model"),
        (["--model", "smollm2:31"], "--model"), (["--model", "smollm2:two"], "--model"),
        (["--model", f"hf:{tmp_path / 'none'}"], "--model"), (["--model", f"hf:{small}"], "--model"),
        (["--model", "smollm2", "--d-model", "64"], "--d-model"), (["--model", "smollm2", "--layers", "2"], "--layers"),
        (["--model", f"hf:{tiny_dir}", "--heads", "2"], "--heads"),
        (["--model", f"hf:{tiny_dir}", "--init", "torch"], "--init"),
        (["--model", f"hf:{tiny_dir}", "--warmup-target", "0.35"], "--warmup-target"),
        (["--task", "add1"], "--task"), (["--model", f"hf:{ids_config}", "--task", "add1"], "--task"),
        (["--model", f"hf:{tiny_dir}", "--task", "add1", "--dataset-size", "101"], "--dataset-size"),
    ]
    for flags, flag in cases:
        with pytest.raises(SystemExit) as exc:
            main([*flags, "--out", str(tmp_path / "run")])
        assert exc.value.code == 2 and flag in capsys.readouterr().err, flags
    assert not (tmp_path / "run").exists()


def _args(out, model, *extra):
    return build_parser().parse_args(["--model", model, "--precision", "bf16", "--steps", "2", "--batch", "2",
                                      "--group", "2", "--dataset-size", "16", "--eval-prompts", "1", "--lr", "1e-2",
                                      "--no-progress", "--out", str(out), *extra])


def _records(out):
    return [{k: v for k, v in json.loads(line).items() if k not in UNSHARED}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_has_no_matched_mismatch_and_resumes_bit_for_bit(tmp_path, ids_config):
    model = f"hf:{ids_config}"
    train(_args(tmp_path / "full", model, "--task", "add", "--strict"), log=lambda *_: None)
    part = _args(tmp_path / "part", model, "--task", "add", "--strict")
    part.steps = 1
    train(part, log=lambda *_: None)
    train(_args(tmp_path / "part", model, "--task", "add", "--strict", "--resume"), log=lambda *_: None)
    full, resumed = _records(tmp_path / "full"), _records(tmp_path / "part")
    assert full == resumed and [r["step"] for r in full] == [1, 2]
    assert all(r["frac_tokens_differ"] == 0 and r["max_abs_dlogp"] == 0 and r["n_tokens"] > 0 for r in full)
    assert any(r["grad_norm"] > 0 for r in full)           # the learner stepped: resuming had weights to get right
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("full", "part"))
    assert a["model"].keys() == b["model"].keys() and a["step"] == b["step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(v.dtype == torch.float32 for v in a["model"].values() if v.is_floating_point())  # fp32 masters
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_the_engine_profile_shows_a_mismatch_in_bf16(tmp_path, ids_config):
    args = _args(tmp_path / "engine", f"hf:{ids_config}", "--task", "add", "--profile", "engine")
    args.steps = 1
    summary = train(args, log=lambda *_: None)
    record = _records(tmp_path / "engine")[0]
    assert record["frac_tokens_differ"] > 0 and record["mean_abs_dlogp"] > 0 and summary["mean_abs_dlogp"] > 0


def test_a_non_finite_sampler_log_prob_skips_the_update(tmp_path, ids_config, monkeypatch):
    """One NaN among the sampler's log-probs: the step is logged, counted as skipped, and the weights do not move."""
    real = rl.train.generate

    def nan_generate(*args, **kwargs):
        ro = real(*args, **kwargs)
        ro.logprobs[0, 0] = float("nan")
        return ro

    monkeypatch.setattr(rl.train, "generate", nan_generate)
    args = _args(tmp_path / "nan", f"hf:{ids_config}", "--task", "add")
    args.steps = 1
    logged = []
    train(args, log=logged.append)
    assert any("NON-FINITE sampler log-probs" in m and "skipped" in m for m in logged), logged
    record = _records(tmp_path / "nan")[0]
    assert record["skipped"] >= 1 and record["loss"] is None
    start = hf.load_model(hf.parse_model(f"hf:{ids_config}"), 0, DEV)[0].state_dict()
    trained = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=False)["model"]
    trained = {k.removeprefix("hf."): v for k, v in trained.items()}
    assert trained.keys() == start.keys() and all(torch.equal(trained[k], start[k]) for k in start)


# --- the real model (slow) ---------------------------------------------------------------------


def _smollm2_or_skip():
    try:
        hf.find_gguf()
    except hf.ModelNotInstalledError as e:
        pytest.skip(str(e))


def test_the_paren_task_rewards_the_opening_parenthesis(tiny):
    """The task the smollm2:2 run uses: a response that only opens with "(" earns 1/6 partial, 0 binary."""
    _, tokenizer = tiny
    task = TextTask("paren", tokenizer)
    prompts = task.prompt_set(ParenthesesInWords.n_problems, seed=0, device=DEV)
    assert sorted(prompts.answers) == sorted(f"({w})" for w in ParenthesesInWords.words)
    assert len(set(prompts.answers)) == 32 and task.max_new_tokens == 5
    rows = [tokenizer(s)["input_ids"] + [2] for s in (f" {prompts.answers[0]} ", "( x and", "x")]
    width = max(len(r) for r in rows)
    responses = torch.tensor([r + [2] * (width - len(r)) for r in rows])
    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in rows])
    three = prompts[[0, 0, 0]]
    assert torch.equal(task.reward(three, responses, mask, partial=True), torch.tensor([1.0, 1 / 6, 0.0]))
    assert task.reward(three, responses, mask, partial=False).tolist() == [1.0, 0.0, 0.0]


def _smollm2_2_run_and_resume(tmp_path, check_moved: bool):
    """On paren (add1 earns the 2-layer cut nothing, so no weight would move), two steps against one step
    and a resume: records, weights and AdamW's state bit for bit."""
    _smollm2_or_skip()
    flags = ["--task", "paren", "--reward", "partial", "--batch", "1", "--lr", "1e-5", "--strict"]
    train(_args(tmp_path / "full", "smollm2:2", *flags), log=print)
    part = _args(tmp_path / "part", "smollm2:2", *flags)
    part.steps = 1
    train(part, log=print)
    train(_args(tmp_path / "part", "smollm2:2", *flags, "--resume"), log=print)
    full = _records(tmp_path / "full")
    assert full == _records(tmp_path / "part") and [r["step"] for r in full] == [1, 2]
    assert all(r["frac_tokens_differ"] == 0 and r["max_abs_dlogp"] == 0 and r["n_tokens"] > 0 for r in full)
    assert any(r["reward"] > 0 for r in full) and any(r["grad_norm"] > 0 for r in full), full
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=False) for d in ("full", "part"))
    assert a["model"].keys() == b["model"].keys() and a["step"] == b["step"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa and sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    if not check_moved:
        return
    start = hf.load_model(hf.parse_model("smollm2:2"), 0, DEV)[0].state_dict()
    trained = {k.removeprefix("hf."): v for k, v in a["model"].items()}
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k].to(trained[k].device)) for k in start)   # the learner moved them


def test_smollm2_2_runs_without_matched_mismatch_and_resumes_bit_for_bit_reduced(tmp_path):
    """make test's form: the fewest steps that test a resume (2 against 1 + 1), without reloading the start
    weights to compare (grad_norm > 0 at lr 1e-5 already shows the learner stepped)."""
    _smollm2_2_run_and_resume(tmp_path, check_moved=False)


@pytest.mark.slow
@SLOW
def test_smollm2_2_runs_without_matched_mismatch_and_resumes_bit_for_bit(tmp_path):
    """The full form: also reloads smollm2:2 and checks the learner moved the weights."""
    _smollm2_2_run_and_resume(tmp_path, check_moved=True)


@pytest.mark.slow
@SLOW
def test_smollm2_2_engine_sampler_differs_in_bf16(tmp_path):
    _smollm2_or_skip()
    args = _args(tmp_path / "engine", "smollm2:2", "--task", "add1", "--batch", "1", "--lr", "1e-5",
                 "--profile", "engine")
    args.steps = 1
    assert train(args, log=print)["mean_abs_dlogp"] > 0


def _greedy_reward(model, tokenizer, task_name: str, partial: bool) -> float:
    """Mean reward of greedy responses to all of a task's problems, plain torch outside the mode."""
    task = TextTask(task_name, tokenizer)
    prompts = task.prompt_set(task.task.n_problems, seed=0, device=DEV)
    with torch.no_grad():
        out = model.generate(prompts.ids, attention_mask=prompts.mask, do_sample=False, top_k=None, top_p=None,
                             max_new_tokens=task.max_new_tokens, eos_token_id=task.eos_id, pad_token_id=task.pad_id)
    responses = out[:, prompts.ids.shape[1]:]
    stopped_before = torch.cumsum((responses == task.eos_id).long(), 1) - (responses == task.eos_id).long()
    return float(task.reward(prompts, responses, stopped_before == 0, partial=partial).mean())


@pytest.mark.slow
@SLOW
def test_smollm2_partly_solves_add1_out_of_the_box():
    """Greedy accuracy before any RL, plain torch outside the mode (fp32, all 30 layers): neither 0 nor 1."""
    _smollm2_or_skip()
    model, tokenizer = hf.load_smollm2(dtype=torch.float32)
    accuracy = _greedy_reward(model, tokenizer, "add1", partial=False)
    print(f"SmolLM2-135M-Instruct greedy accuracy on add1 (100 problems, plain torch fp32): {accuracy:.0%}")
    assert 0.2 < accuracy < 0.95


@pytest.mark.slow
@SLOW
def test_smollm2_2_earns_nothing_on_add1_and_a_partial_reward_on_paren():
    """Why the smollm2:2 run trains on paren: greedy (plain torch fp32), its 2-layer cut solves no add1 problem,
    and its responses open with "(" often enough for a partial reward on paren."""
    _smollm2_or_skip()
    model, tokenizer = hf.load_smollm2(layers=2, dtype=torch.float32)
    accuracy = _greedy_reward(model, tokenizer, "add1", partial=False)
    paren = _greedy_reward(model, tokenizer, "paren", partial=True)
    print(f"smollm2:2 greedy, plain torch fp32: add1 accuracy {accuracy:.0%} (100 problems), "
          f"paren partial reward {paren:.3f} (32 problems)")
    assert accuracy == 0 and paren > 0


# --- the same mismatch under verl's and TRL's names ---------------------------------------------


def test_dashboard_metrics_are_verls_and_trls_definitions():
    import math

    from rl.metrics import DASHBOARD_KEYS, dashboard_metrics, mismatch_metrics

    mu = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.25, -7.0]])
    old = torch.tensor([[-1.125, -2.0, -0.25], [-3.0, -0.5, -1.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    pairs = [(-1.0, -1.125), (-2.0, -2.0), (-0.5, -0.25), (-3.0, -3.0), (-0.25, -0.5)]   # (mu, old), sampled
    dp = [abs(math.exp(o) - math.exp(m)) for m, o in pairs]
    d = [o - m for m, o in pairs]
    mean_dp = sum(dp) / 5
    want = {
        "training/rollout_probs_diff_mean": mean_dp, "training/rollout_probs_diff_max": max(dp),
        "training/rollout_probs_diff_std": math.sqrt(sum((x - mean_dp) ** 2 for x in dp) / 4),   # Bessel, as torch.std
        "rollout_corr/kl": sum(-x for x in d) / 5, "rollout_corr/k3_kl": sum(math.exp(x) - 1 - x for x in d) / 5,
        "sampling/sampling_logp_difference/mean": sum(abs(x) for x in d) / 5,
        "sampling/sampling_logp_difference/max": max(abs(x) for x in d),
        "sampling/importance_sampling_ratio/min": math.exp(min(d)),
        "sampling/importance_sampling_ratio/mean": sum(math.exp(x) for x in d) / 5,
        "sampling/importance_sampling_ratio/max": math.exp(max(d)),
    }
    got = dashboard_metrics(mu, old, mask)
    assert list(got) == list(DASHBOARD_KEYS)
    assert all(math.isclose(got[k], want[k], rel_tol=1e-12, abs_tol=1e-15) for k in want), got
    ours = mismatch_metrics(mu, old, mask)            # the figures both stacks share with ours, to the bit
    assert (got["rollout_corr/k3_kl"], got["rollout_corr/kl"]) == (ours["k3"], ours["k1"])
    assert got["sampling/sampling_logp_difference/mean"] == ours["mean_abs_dlogp"]
    assert got["sampling/sampling_logp_difference/max"] == ours["max_abs_dlogp"]
    assert got["training/rollout_probs_diff_max"] == ours["dp_max"]
    assert all(math.isnan(v) for v in dashboard_metrics(mu, old, torch.zeros_like(mask)).values())
