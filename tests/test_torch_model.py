"""rl.torch_model: the plain-torch path over TinyGPT's parameters (outside the invariants)."""

import torch

from rl.decoding import greedy_decode
from rl.model import ModelConfig, TinyGPT
from rl.torch_model import generate, sequence_logprobs, torch_forward, torch_hidden, torch_logits

CFG = ModelConfig(vocab_size=13, d_model=16, n_layers=2, n_heads=2, max_seq_len=10, precision="fp32")


def _params(seed=0):
    return dict(TinyGPT(CFG, seed=seed).named_parameters())


def test_kv_cache_decode_matches_the_full_pass():
    params = _params()
    tokens = torch.randint(0, 13, (3, 8), generator=torch.Generator().manual_seed(0))
    full = torch_hidden(params, CFG, tokens)
    caches = [{} for _ in range(CFG.n_layers)]
    steps = [torch_hidden(params, CFG, tokens[:, :5], caches, 0)]
    steps += [torch_hidden(params, CFG, tokens[:, t:t + 1], caches, t) for t in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert torch.equal(torch_logits(params, CFG, tokens), torch_forward(TinyGPT(CFG, seed=0))(tokens))


def test_sampler_logprobs_match_the_learner_and_greedy_decodes_the_argmax():
    params = _params(1)
    prompts = torch.randint(0, 13, (4, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ro = generate(params, CFG, prompts, 6, generator=torch.Generator().manual_seed(2), eos_id=12, pad_id=11)
        lp = sequence_logprobs(params, CFG, ro.tokens, 3)
    torch.testing.assert_close(lp[ro.mask], ro.logprobs[ro.mask], rtol=1e-5, atol=1e-5)
    assert torch.all(ro.logprobs[~ro.mask] == 0) and torch.all(ro.tokens[:, 3:][~ro.mask] == 11)
    with torch.no_grad():
        resp, mask = greedy_decode(lambda seq: torch_logits(params, CFG, seq)[:, -1], prompts, 6, 12, 11)
        seq = torch.cat([prompts, resp], dim=1)
        argmax = torch_logits(params, CFG, seq[:, :-1])[:, 2:].argmax(-1)
    assert torch.equal(resp[mask], argmax[mask])
