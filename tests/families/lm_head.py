"""pk.linear_logprobs and pk.linear_sample's test data (ops/lm_head.py): samples, opcheck cases,
bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.lm_head import linear_logprobs, linear_sample

from . import _tensors as S
from ._cases import MatchesTorch, OpcheckCase, Raises, Sample
from .token_logprobs import BAD_TEMPERATURES


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    h, w = S.leaf((rows, k), dtype, g), S.leaf((n, k), dtype, g)
    tokens, seeds = S.random_ids(n, (rows,), g), torch.randint(-(2**63), 2**63 - 1, (rows,), generator=g).to(S.DEV)

    def head(h, w):
        return (linear_logprobs(h, w, tokens, temperature=0.9),
                *linear_sample(h.detach(), w.detach(), temperature=0.9, seeds=seeds))

    return [Sample("lm_head", head, (h, w))]


def opcheck():
    r, ops, tok = S.rand, torch.ops.pk, S.ids(0, 6, 2)
    h, w, g3 = r(3, 4), r(7, 4, seed=1), r(3, seed=5)
    _, ent, lmax, lsum = S.no_grad(*ops.linear_logprobs(h, w, tok, 0.7, True))
    return [
        OpcheckCase("linear_logprobs", ops.linear_logprobs,
                    (r(3, 4, grad=True), r(7, 4, seed=1, grad=True), tok, 0.7, False)),
        OpcheckCase("linear_logprobs/entropy/bf16", ops.linear_logprobs,
                    (r(3, 4, dtype=S.BF16, grad=True), r(7, 4, dtype=S.BF16, seed=1, grad=True), tok, 1.0, True)),
        OpcheckCase("linear_logprobs_backward", ops.linear_logprobs_backward,
                    (h, w, tok, g3, g3 * 0.5, ent, lmax, lsum, 0.7, "interpreter", True, True)),
        OpcheckCase("linear_sample", ops.linear_sample, (h, w, S.ids(11, -5, 2**40), 0.8)),
    ]


def bad_inputs():
    r, ids, ops = S.rand, S.ids, torch.ops.pk
    X, W, T = (lambda: r(3, 4)), (lambda: r(5, 4, seed=1)), (lambda: ids(0, 4, 2))
    llp, ls, F = linear_logprobs, linear_sample, torch.nn.functional
    temperature = "float32 value T and a float32 1/T"
    return [
        Raises("linear_logprobs/None hidden", lambda: llp(None, W(), T()), TypeError, "hidden must be a torch.Tensor"),
        Raises("linear_logprobs/None weight", lambda: llp(X(), None, T()), TypeError, "weight must be a torch.Tensor"),
        Raises("linear_logprobs/None tokens", lambda: llp(X(), W(), None), TypeError, "tokens must be a torch"),
        Raises("linear_logprobs/mixed", lambda: llp(X(), W().half(), T()), TypeError, "dtype mismatch"),
        Raises("linear_logprobs/device", lambda: llp(X(), S.meta(5, 4), T()), ValueError, "weight is on meta"),
        Raises("linear_logprobs/weight rank", lambda: llp(X(), r(20), T()), ValueError, "weight must be"),
        Raises("linear_logprobs/d", lambda: llp(X(), r(5, 3), T()), ValueError, "hidden's last dimension"),
        Raises("linear_logprobs/empty vocab", lambda: llp(X(), r(0, 4), T()), ValueError, "empty vocabulary"),
        Raises("linear_logprobs/tokens shape", lambda: llp(X(), W(), ids(1)), ValueError, "tokens has shape"),
        Raises("linear_logprobs/id -1", lambda: llp(X(), W(), ids(0, -1, 2)), ValueError, "tokens holds id -1"),
        Raises("linear_logprobs/id V", lambda: llp(X(), W(), ids(0, 5, 2)), ValueError, "tokens holds id 5"),
        *[Raises(f"linear_logprobs/T={t}", lambda t=t: llp(X(), W(), T(), t), ValueError, temperature)
          for t in BAD_TEMPERATURES],
        Raises("pk::linear_logprobs/id V", lambda: ops.linear_logprobs(X(), W(), ids(0, 5, 2), 1.0, False),
               ValueError, "tokens holds id 5"),
        Raises("linear_sample/None hidden", lambda: ls(None, W()), TypeError, "hidden must be a torch.Tensor"),
        Raises("linear_sample/None weight", lambda: ls(X(), None), TypeError, "weight must be a torch.Tensor"),
        Raises("linear_sample/int", lambda: ls(X().int(), W().int()), TypeError, "hidden must be float32"),
        Raises("linear_sample/device", lambda: ls(S.meta(3, 4), W()), ValueError, "hidden is on meta"),
        Raises("linear_sample/0-d", lambda: ls(r(()), W()), ValueError, "hidden's last dimension"),
        Raises("linear_sample/generator", lambda: ls(X(), W(), generator=0), TypeError,
               "generator must be a torch.Generator"),
        *[Raises(f"linear_sample/T={t}", lambda t=t: ls(X(), W(), t), ValueError, temperature)
          for t in BAD_TEMPERATURES],
        MatchesTorch("linear_logprobs rows=0", lambda: llp(r(0, 4), W(), ids()), lambda: torch.empty(0, device=S.DEV)),
        MatchesTorch("linear_logprobs d=0", lambda: llp(r(3, 0), r(5, 0), T()),
                     lambda: torch.log_softmax(F.linear(r(3, 0), r(5, 0)), -1).gather(-1, T()[:, None])[:, 0]),
        MatchesTorch("linear_sample rows=0", lambda: ls(r(0, 4), W())[1], lambda: torch.empty(0, device=S.DEV)),
    ]
