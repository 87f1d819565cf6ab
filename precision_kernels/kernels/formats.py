"""Named constexpr codes the kernels branch on: a tensor's storage format and the fused LM head's mode.

Kernels compare their ``KIND`` / ``OUT_KIND`` / ``W_KIND`` ... constexpr arguments against these
names instead of bare integers. The ops pass plain ints (``ops/_common.kind``, ``ops/fp8``, ``ops/lm_head``); the
two sides must agree, which tests/test_formats.py checks.
"""

import triton.language as tl

# Storage format of a tensor a kernel loads or stores. 16-bit formats travel as int16 bit patterns
# (``to_fp32`` widens them, ``round_fp32`` produces them).
FP32 = tl.constexpr(0)
FP16 = tl.constexpr(1)
BF16 = tl.constexpr(2)
# fp8 formats travel as uint8 bit patterns (ops/fp8.py, kernels/fp8_matmul.py).
FP8_E4M3FN = tl.constexpr(3)
FP8_E5M2 = tl.constexpr(4)

# What the fused LM-head kernel computes for each row (kernels/lm_head.py).
SCORE = tl.constexpr(0)    # the log-prob (and entropy) of a given token
SAMPLE = tl.constexpr(1)   # draw a token by Gumbel-max, and its log-prob
