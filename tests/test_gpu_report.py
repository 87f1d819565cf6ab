"""benchmarks/gpu_report.py's methodology, checked without a GPU: identical kernels must time alike."""

import precision_kernels as pk
from benchmarks.gpu_report import flag_identical_kernel_noise


def _row(profile: str, m: int, ms: float) -> dict:
    return {"dtype": "float16", "M": m, "profile": profile, "pk_ms": ms}


def test_same_kernel_pair_more_than_ten_percent_apart_is_flagged():
    big = pk.profiles.engine_config().split_m + 1
    rows = flag_identical_kernel_noise([_row("matched", big, 1.0), _row("engine", big, 2.9)])
    assert all(r["same_kernel_as_other_profile"] and r["noisy"] for r in rows)


def test_same_kernel_pair_within_ten_percent_is_not_flagged():
    big = pk.profiles.engine_config().split_m + 1
    rows = flag_identical_kernel_noise([_row("matched", big, 1.0), _row("engine", big, 1.05)])
    assert not any(r["noisy"] for r in rows)


def test_split_k_rows_are_different_kernels_and_never_flagged():
    small = pk.profiles.engine_config().split_m
    rows = flag_identical_kernel_noise([_row("matched", small, 1.0), _row("engine", small, 3.0)])
    assert not any(r["same_kernel_as_other_profile"] for r in rows)
    assert not any("noisy" in r for r in rows)
