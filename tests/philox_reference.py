"""Philox4x32-10 in numpy, written from the published definition (Salmon, Moraes, Dror, Shaw,
"Parallel random numbers: as easy as 1, 2, 3", SC 2011), and the sampler's uint32 -> (0, 1) map.

Independent of Triton: the tests compare the kernels' integer stream to this, bit for bit.
"""

import numpy as np

# Round multipliers and Weyl key increments of Philox4x32 (the paper's constants).
MULTIPLIER_0, MULTIPLIER_1 = 0xD2511F53, 0xCD9E8D57
WEYL_0, WEYL_1 = 0x9E3779B9, 0xBB67AE85
LOW_32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32 with 10 rounds: counter (c0, c1, c2, c3) and key (k0, k1), uint32 arrays that broadcast.

    One round: (hi0, lo0) = M0 * c0 and (hi1, lo1) = M1 * c2 as 64-bit products, then
    (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0); the key then advances by
    the Weyl increments. Returns the four uint32 output words.
    """
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32).astype(np.uint64) for c in counter)
    k0, k1 = (np.asarray(k, dtype=np.uint32).astype(np.uint64) for k in key)
    for _ in range(10):
        p0 = np.uint64(MULTIPLIER_0) * c0
        p1 = np.uint64(MULTIPLIER_1) * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & LOW_32,
                          (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & LOW_32)
        k0 = (k0 + np.uint64(WEYL_0)) & LOW_32
        k1 = (k1 + np.uint64(WEYL_1)) & LOW_32
    return tuple(np.broadcast_to(c, np.broadcast_shapes(c0.shape, c1.shape, c2.shape, c3.shape)).astype(np.uint32)
                 for c in (c0, c1, c2, c3))


def seed_key(seeds):
    """int64 seeds -> Philox key (low 32 bits, high 32 bits) of their two's-complement bits."""
    bits = np.asarray(seeds, dtype=np.int64).view(np.uint64)
    return (bits & LOW_32).astype(np.uint32), (bits >> np.uint64(32)).astype(np.uint32)


def sample_bits(seeds, cols):
    """The sampler's integers: word 0 of Philox4x32-10 at counter (col, 0, 0, 0), key from the row's seed.

    seeds (R,) int64, cols (C,) non-negative ints -> (R, C) uint32.
    """
    k0, k1 = seed_key(seeds)
    cols = np.asarray(cols, dtype=np.uint32)[None, :]
    zero = np.zeros_like(cols)
    return philox4x32_10((cols, zero, zero, zero), (k0[:, None], k1[:, None]))[0]


def open_uniform(bits):
    """uint32 -> float32 u = (2 * (bits >> 9) + 1) * 2^-24: the top 23 bits, centred in their cell; 0 < u < 1."""
    k = (np.asarray(bits, dtype=np.uint32) >> np.uint32(9)).astype(np.float32)
    return (k * np.float32(2) + np.float32(1)) * np.float32(2.0**-24)


def gumbel_keys(z, seeds):
    """Gumbel-max keys z - log(-log(u)) in float32, as the SAMPLE kernel forms them (z: (R, V) float32)."""
    u = open_uniform(sample_bits(seeds, np.arange(z.shape[1])))
    return np.asarray(z, dtype=np.float32) - np.log(-np.log(u))
