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


def test_matmul_targets_follow_issue_13():
    """>= 90% of cuBLAS at M >= 2048, >= 50% at M <= 16, and no point below 40%."""
    from benchmarks.gpu_report import MATMUL_M, matmul_target

    assert MATMUL_M == (1, 16, 256, 2048, 4096)
    assert [matmul_target(m) for m in (1, 16, 17, 256, 2047, 2048, 4096)] == [0.5, 0.5, 0.4, 0.4, 0.4, 0.9, 0.9]


def test_matmul_row_is_the_fraction_of_cublas_speed_with_the_target_on_matched_rows():
    from benchmarks.gpu_report import matmul_row

    row = matmul_row("float16", 4096, 4096, 4096, "matched", pk_ms=2.0, cublas_ms=1.5, flops=2 * 4096**3)
    assert row["ratio"] == 0.75 and row["target_min_ratio"] == 0.9 and row["meets_target"] is False
    assert matmul_row("float16", 16, 4096, 4096, "matched", 1.0, 0.6, 1.0)["meets_target"] is True
    engine = matmul_row("float16", 16, 4096, 4096, "engine", 1.0, 0.1, 1.0)
    assert "meets_target" not in engine  # the targets are the matched profile's


def test_score_row_is_pk_time_over_torch_time_against_the_pass_target():
    from benchmarks.gpu_report import SCORE_SHAPES, score_row

    assert SCORE_SHAPES == ((4096, 1024, 32768), (4096, 4096, 151936))
    fwd = score_row("bfloat16", SCORE_SHAPES[0], "forward", pk_ms=4.5, torch_ms=1.5, pk_extra_bytes=2**20,
                    torch_extra_bytes=2**22)
    assert (fwd["ratio"], fwd["target_max_ratio"], fwd["meets_target"]) == (3.0, 1.0, False)
    assert (fwd["pk_extra_MiB"], fwd["torch_extra_MiB"], fwd["memory_ratio"]) == (1.0, 4.0, 0.25)
    both = score_row("bfloat16", SCORE_SHAPES[1], "forward+backward", 2.6, 2.0, 0, 0)
    assert (both["ratio"], both["target_max_ratio"], both["meets_target"], both["memory_ratio"]) == \
        (1.3, 1.3, True, None)


def test_short_run_reports_speed_and_per_step_mismatch(tmp_path):
    """benchmarks.short_run, the entry point gpu_report's short CUDA run calls; here on the backend's device."""
    from benchmarks.short_run import short_run

    res = short_run("bf16", "engine", str(tmp_path), steps=2,
                    extra=("--batch", "2", "--group", "2", "--d-model", "32", "--dataset-size", "8",
                           "--warmup-target", "0.0"))
    assert res["device"] == str(pk.backend.device()) and res["steps_per_s"] > 0
    assert [r["step"] for r in res["per_step"]] == [1, 2]
    assert all(r["mean_abs_dlogp"] > 0 for r in res["per_step"])  # the engine sampler differs from the learner
