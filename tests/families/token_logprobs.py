"""pk.token_logprobs's test data (ops/token_logprobs.py): samples, row samples, opcheck cases,
bad-input rows."""

from __future__ import annotations

import torch

from precision_kernels.ops.token_logprobs import token_logprobs

from . import _tensors as S
from ._cases import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample


def samples(dtype, rows, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    logits, tokens = S.leaf((rows, n), dtype, g, scale=3.0), S.random_ids(n, (rows,), g)
    return [Sample("token_logprobs", lambda x: token_logprobs(x, tokens, temperature=0.7, return_entropy=True),
                   (logits,))]


def row_samples(dtype, rows, n, seed):
    g = torch.Generator().manual_seed(seed)
    x, tokens = S.leaf((rows, n), dtype, g, scale=3.0), S.random_ids(n, (rows,), g)
    lp, ent = token_logprobs(x, tokens, temperature=0.7, return_entropy=True)
    return [lp, ent, torch.autograd.grad(lp.sum() + ent.sum(), x)[0]]


def opcheck():
    r, ops = S.rand, torch.ops.pk
    logits, tok, g3 = r(3, 7), S.ids(0, 6, 2), r(3, seed=5)
    _, ent, lmax, lsum = S.no_grad(*ops.token_logprobs(logits, tok, 0.7, True))
    return [
        OpcheckCase("token_logprobs", ops.token_logprobs, (r(3, 7, grad=True), S.ids(0, 6, 2), 0.7, False)),
        OpcheckCase("token_logprobs/entropy/fp16", ops.token_logprobs,
                    (r(3, 7, dtype=S.F16, grad=True), S.ids(0, 6, 2), 1.0, True)),
        OpcheckCase("token_logprobs_backward", ops.token_logprobs_backward,
                    (logits, tok, g3, g3 * 0.5, ent, lmax, lsum, 0.7)),
        OpcheckCase("token_logprobs_backward/no-entropy", ops.token_logprobs_backward,
                    (logits, tok, g3, None, ent, lmax, lsum, 0.7)),
    ]


# Rejected temperatures: 1e-39 has a float32 T > 0 whose float32 1/T overflows.
BAD_TEMPERATURES = [0.0, -1.0, S.NAN, S.INF, -S.INF, 1e-50, 1e39, 1e-39]


def bad_inputs():
    r, ids, T = S.rand, S.ids, (lambda: S.ids(0, 4, 2))
    tl = token_logprobs
    return [
        Raises("token_logprobs/None logits", lambda: tl(None, T()), TypeError, "logits must be a torch.Tensor"),
        Raises("token_logprobs/None tokens", lambda: tl(r(3, 5), None), TypeError, "tokens must be a torch"),
        Raises("token_logprobs/int logits", lambda: tl(r(3, 5).long(), T()), TypeError, "logits must be"),
        Raises("token_logprobs/float tokens", lambda: tl(r(3, 5), T().float()), TypeError, "tokens must hold"),
        Raises("token_logprobs/device", lambda: tl(S.meta(3, 5), T()), ValueError, "logits is on meta"),
        Raises("token_logprobs/tokens device", lambda: tl(r(3, 5), T().to("meta")), ValueError, "tokens is on meta"),
        Raises("token_logprobs/tokens shape", lambda: tl(r(3, 5), ids(0, 1)), ValueError, "tokens has shape"),
        Raises("token_logprobs/0-d", lambda: tl(r(()), ids()), ValueError, "logits must have a vocab"),
        Raises("token_logprobs/empty vocab", lambda: tl(r(3, 0), T()), ValueError, "vocabulary dimension"),
        Raises("token_logprobs/id -1", lambda: tl(r(3, 5), ids(0, -1, 2)), ValueError, "tokens holds id -1"),
        Raises("token_logprobs/id V", lambda: tl(r(3, 5), ids(0, 5, 2)), ValueError, "tokens holds id 5"),
        *[Raises(f"token_logprobs/T={t}", lambda t=t: tl(r(3, 5), T(), t), ValueError,
                 "temperature must have a float32 value T and a float32 1/T that are both finite and > 0")
          for t in BAD_TEMPERATURES],
        *[Raises(f"token_logprobs/T {t!r}", lambda t=t: tl(r(3, 5), T(), t), TypeError,
                 "temperature must be a real number") for t in (None, "1", True, 1j)],
        # the range check reads the ids, so the custom op itself makes it (what torch.compile calls)
        Raises("pk::token_logprobs/id -1", lambda: torch.ops.pk.token_logprobs(r(3, 5), ids(0, -1, 2), 1.0, False),
               ValueError, "tokens holds id -1"),
        Raises("pk::token_logprobs/id V", lambda: torch.ops.pk.token_logprobs(r(3, 5), ids(0, 5, 2), 1.0, False),
               ValueError, "tokens holds id 5"),
        Raises("pk::token_logprobs/tokens", lambda: torch.ops.pk.token_logprobs(r(3, 4), ids(0, 1), 1.0, False),
               ValueError, "pk::token_logprobs"),
        MatchesTorch("token_logprobs rows=0", lambda: tl(r(0, 5), ids()), lambda: torch.empty(0, device=S.DEV)),
        NonFinite("token_logprobs", lambda x: tl(x, ids(0, 1, 2, 3)),
                  lambda x: torch.log_softmax(x.double(), -1).gather(-1, ids(0, 1, 2, 3)[:, None])[:, 0]),
    ]
