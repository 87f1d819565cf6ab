"""The compiled attention forward addresses its k, v and mask tiles by int32 offsets from a 64-bit base per key
block (fewer registers, no spills at head dims 64 and 128); the op refuses strides those offsets cannot reach."""

import pytest

from precision_kernels.kernels.attention import check_block_offsets


def _strides(k_t=64, v_t=64, m_t=40, m_k=1):
    # (q, k, v, mask), each (b, h, t, d/key): contiguous (B, H, T, 64) tensors and a (B, H, Tq, Tk) mask
    return (1, 1, 64, 1, 1, 1, k_t, 1, 1, 1, v_t, 1, 1, 1, m_t, m_k)


def test_contiguous_strides_fit():
    check_block_offsets(_strides(), 64, 32, 128)
    check_block_offsets(_strides(k_t=2**31 // 32 - 4), 64, 32, 1)  # (32 - 1) x stride + 0 < 2**31


@pytest.mark.parametrize("name, strides", [("k", _strides(k_t=2**27)), ("v", _strides(v_t=2**27)),
                                           ("attn_mask", _strides(m_t=2**26))])
def test_strides_past_int32_within_a_tile_are_refused(name, strides):
    with pytest.raises(ValueError, match=rf"attention: the strides of \['{name}'\] reach .* past the compiled "
                                         r"kernel's int32 offsets"):
        check_block_offsets(strides, 64, 32, 128)
