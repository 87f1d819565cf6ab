"""The one registration table of the ahead-of-time compile check (``compile_check.py``).

Each entry names a kernel, its runtime signature and the constexpr configs it is compiled
with. ``signature`` maps each runtime argument to a Triton type string ("*fp32", "*i16",
"i32", ...); each config maps every constexpr argument to a value, and may add the launch
options ``num_warps`` / ``num_stages`` the kernel is launched with. The configs are the CUDA
table's (the ones that run compiled), in both profiles where the engine changes a constexpr.
16-bit formats travel as int16 bit patterns ("*i16" pointers).

``make test`` compiles the first config of one kernel per family (the name without its
dtype suffix); ``--all`` compiles every config of every kernel.

Adding a kernel to the check is one ``register(...)`` call in ``_register_all`` below.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CallSpecialization:
    """How Triton's JIT specialises a typical launch: ``ones`` are integer arguments equal to 1 there (compiled
    as constexprs), ``divisible`` are pointers 16-byte aligned / integers divisible by 16 (``tt.divisibility``).
    The compile check compiles each config this way too, besides the generic signature, because the kernel a
    GPU runs is the specialised one (other registers, other spills)."""

    name: str
    ones: tuple = ()
    divisible: tuple = ()


# The fused LM head called on contiguous hidden states and weight with K % 16 == 0 (a model's usual call):
# only its tl.dot operands keep Triton's specialisation (kernels/lm_head.py: MATMUL_OPERANDS).
CONTIGUOUS_HEAD = CallSpecialization("contiguous", ones=("stride_hk", "stride_wk"),
                                     divisible=("h_ptr", "w_ptr", "K", "k_chunk", "stride_hm", "stride_wv"))


@dataclass(frozen=True)
class KernelSpec:
    name: str
    fn: object
    signature: dict
    configs: list = field(default_factory=list)
    # Name of a family whose TTGIR tt.reduce layouts must match config by config (I5 audit).
    reduce_layout_group: str | None = None
    expects_mma: bool = False
    # Runtime specialisations compiled besides the generic signature.
    calls: tuple = ()


# (dtype name, storage kind, pointer type of its tensors inside a kernel)
FORMATS = (("fp32", 0, "*fp32"), ("fp16", 1, "*i16"), ("bf16", 2, "*i16"))
# Row kernels are registered per pointer type: (name suffix, pointer type, storage kinds).
# The 16-bit group comes first, so make test compiles bf16.
ROW_FORMAT_GROUPS = (("", "*i16", (2, 1)), ("_fp32", "*fp32", (0,)))


def register(table: dict, name: str, fn, signature: dict, configs: list, *, reduce_layout_group: str | None = None,
             expects_mma: bool = False, calls: tuple = ()) -> None:
    if name in table:
        raise ValueError(f"kernel {name!r} is registered twice")
    for call in calls:
        unknown = [a for a in (*call.ones, *call.divisible) if a not in signature]
        if unknown:
            raise ValueError(f"kernel {name!r}: call specialisation {call.name!r} names unknown arguments {unknown}")
    table[name] = KernelSpec(name, fn, dict(signature), [dict(c) for c in configs], reduce_layout_group,
                             expects_mma, tuple(calls))


def kernel_specs() -> dict[str, KernelSpec]:
    """Every kernel the compile check knows, by name (imports the kernel modules)."""
    table: dict[str, KernelSpec] = {}
    _register_rounding(table)
    _register_matmul(table)
    _register_rows(table)
    _register_lm_head(table)
    return table


def _register_rounding(table: dict) -> None:
    from .kernels.rounding import round_to_kernel

    register(table, "round_to", round_to_kernel,
             signature={"x_ptr": "*fp32", "out_ptr": "*i16", "n_elements": "i64"},
             configs=[{"OUT_KIND": 1, "BLOCK": 1024}, {"OUT_KIND": 2, "BLOCK": 1024}])


def _register_matmul(table: dict) -> None:
    """2-D and batched matmul per dtype, SPLITS = 1 (matched) and the engine's splits, with/without bias;
    the 2-D kernel in the tiles of every M bucket (the compile check audits that they share one
    instruction family). The first config of each kernel is the matched one of the first bucket."""
    from .kernels.matmul import bmm_kernel, matmul_kernel
    from .profiles import engine_config, matmul_buckets_for, matmul_config_for

    engine_splits = engine_config().splits
    for name, kind, ptr in FORMATS:
        bucket_cfgs = list(dict.fromkeys(b.config for b in matmul_buckets_for("cuda", name)))
        cfg3 = matmul_config_for("cuda", name, batched=True)
        register(
            table, f"matmul_{name}", matmul_kernel,
            signature={"a_ptr": ptr, "b_ptr": ptr, "bias_ptr": ptr, "c_ptr": ptr,
                       "M": "i32", "N": "i32", "K": "i32", "k_chunk": "i32",
                       "stride_am": "i64", "stride_ak": "i64", "stride_bk": "i64", "stride_bn": "i64",
                       "stride_cm": "i64", "stride_cn": "i64"},
            configs=[{"KIND": kind, "HAS_BIAS": bias, "SPLITS": splits, "NATIVE_DOT": True,
                      "BLOCK_M": cfg2.block_m, "BLOCK_N": cfg2.block_n, "BLOCK_K": cfg2.block_k,
                      "GROUP_M": cfg2.group_m, "num_warps": cfg2.num_warps, "num_stages": cfg2.num_stages}
                     for cfg2 in bucket_cfgs for splits in (1, engine_splits) for bias in (False, True)],
            expects_mma=kind != 0,
        )
        register(
            table, f"bmm_{name}", bmm_kernel,
            signature={"a_ptr": ptr, "b_ptr": ptr, "c_ptr": ptr,
                       "BATCH": "i32", "M": "i32", "N": "i32", "K": "i32", "k_chunk": "i32",
                       "stride_ab": "i64", "stride_am": "i64", "stride_ak": "i64",
                       "stride_bb": "i64", "stride_bk": "i64", "stride_bn": "i64",
                       "stride_cb": "i64", "stride_cm": "i64", "stride_cn": "i64"},
            configs=[{"KIND": kind, "SPLITS": splits, "NATIVE_DOT": True, "BLOCK_BATCH": cfg3.block_batch,
                      "BLOCK_M": cfg3.block_m, "BLOCK_N": cfg3.block_n, "BLOCK_K": cfg3.block_k}
                     for splits in (1, engine_splits)],
            expects_mma=kind != 0,
        )


def _register_rows(table: dict) -> None:
    """Softmax, token log-probs, RMSNorm and LayerNorm: the CUDA row config, per pointer type."""
    from .kernels.layer_norm import layer_norm_bwd_kernel, layer_norm_fwd_kernel
    from .kernels.norm import col_sum_kernel, rms_norm_bwd_kernel, rms_norm_fwd_kernel
    from .kernels.softmax import softmax_bwd_kernel, softmax_fwd_kernel
    from .kernels.token_logprobs import token_logprobs_bwd_kernel, token_logprobs_fwd_kernel
    from .profiles import row_config_for

    cfg = row_config_for("cuda")
    blocks = {"BLOCK_ROWS": cfg.block_rows, "BLOCK_COLS": cfg.block_cols}
    for suffix, ptr, kinds in ROW_FORMAT_GROUPS:
        register(table, f"softmax_fwd{suffix}", softmax_fwd_kernel,
                 signature={"x_ptr": ptr, "y_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_x": "i32", "scale": "fp32"},
                 configs=[{"KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])
        register(table, f"softmax_bwd{suffix}", softmax_bwd_kernel,
                 signature={"x_ptr": ptr, "dy_ptr": ptr, "dx_ptr": ptr, "max_ptr": "*fp32", "sum_ptr": "*fp32",
                            "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "stride_dy": "i32",
                            "scale": "fp32"},
                 configs=[{"KIND": k, "DY_KIND": k, "LOG": log, **blocks} for k in kinds for log in (False, True)])
        register(table, f"token_logprobs_fwd{suffix}", token_logprobs_fwd_kernel,
                 signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "logprob_ptr": "*fp32",
                            "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_l": "i32", "temperature": "fp32"},
                 configs=[{"KIND": k, "WITH_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])
        register(table, f"token_logprobs_bwd{suffix}", token_logprobs_bwd_kernel,
                 signature={"logits_ptr": ptr, "tokens_ptr": "*i64", "g_logprob_ptr": "*fp32",
                            "g_entropy_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32",
                            "sum_ptr": "*fp32", "dlogits_ptr": ptr, "n_rows": "i32", "n_cols": "i32",
                            "stride_l": "i32", "temperature": "fp32"},
                 configs=[{"KIND": k, "HAS_G_ENTROPY": e, **blocks} for k in kinds for e in (True, False)])
        register(table, f"rms_norm_fwd{suffix}", rms_norm_fwd_kernel,
                 signature={"x_ptr": ptr, "w_ptr": ptr, "y_ptr": ptr, "rstd_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_x": "i32", "eps": "fp32"},
                 configs=[{"KIND": k, "W_KIND": k, **blocks} for k in kinds])
        register(table, f"rms_norm_bwd{suffix}", rms_norm_bwd_kernel,
                 signature={"x_ptr": ptr, "w_ptr": ptr, "dy_ptr": ptr, "rstd_ptr": "*fp32", "dx_ptr": ptr,
                            "dw_part_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32",
                            "stride_dy": "i32"},
                 configs=[{"KIND": k, "W_KIND": k, "DY_KIND": k, **blocks} for k in kinds])
        register(table, f"col_sum{suffix}", col_sum_kernel,
                 signature={"part_ptr": "*fp32", "out_ptr": ptr, "n_parts": "i32", "n_cols": "i32"},
                 configs=[{"OUT_KIND": k, **blocks} for k in kinds])
        register(table, f"layer_norm_fwd{suffix}", layer_norm_fwd_kernel,
                 signature={"x_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr, "y_ptr": ptr, "mean_ptr": "*fp32",
                            "rstd_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32", "stride_x": "i32", "eps": "fp32"},
                 configs=[{"KIND": k, "W_KIND": k, "B_KIND": k, "HAS_W": has, "HAS_B": has, **blocks}
                          for k in kinds for has in (True, False)])
        register(table, f"layer_norm_bwd{suffix}", layer_norm_bwd_kernel,
                 signature={"x_ptr": ptr, "w_ptr": ptr, "dy_ptr": ptr, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                            "dx_ptr": ptr, "dw_part_ptr": "*fp32", "db_part_ptr": "*fp32", "n_rows": "i32",
                            "n_cols": "i32", "stride_x": "i32", "stride_dy": "i32"},
                 configs=[{"KIND": k, "W_KIND": k, "DY_KIND": k, "HAS_W": has, "WANT_DW": has, "WANT_DB": has,
                           **blocks} for k in kinds for has in (True, False)])


def _register_lm_head(table: dict) -> None:
    """The fused LM head: SCORE and SAMPLE modes in one reduce-layout group (I5 audit), and its backward;
    each compiled generic and as a contiguous-operand call specialises it."""
    from .kernels.lm_head import lm_head_dlogits_kernel, lm_head_kernel
    from .profiles import engine_config, lm_head_config_for

    for name, kind, ptr in FORMATS:
        cfg = lm_head_config_for("cuda", name)
        blocks = {"BLOCK_M": cfg.block_m, "BLOCK_V": cfg.block_v, "BLOCK_K": cfg.block_k,
                  "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        configs = [{"MODE": mode, "KIND": kind, "SPLITS": splits, "NATIVE_DOT": True, "WITH_ENTROPY": ent, **blocks}
                   for splits in (1, engine_config().splits) for ent in (False, True) for mode in (0, 1)]
        register(
            table, f"lm_head_{name}", lm_head_kernel,
            signature={"h_ptr": ptr, "w_ptr": ptr, "tokens_ptr": "*i64", "seeds_ptr": "*i64",
                       "logprob_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                       "M": "i32", "V": "i32", "K": "i32", "k_chunk": "i32", "stride_hm": "i64", "stride_hk": "i64",
                       "stride_wv": "i64", "stride_wk": "i64", "temperature": "fp32"},
            configs=configs, reduce_layout_group="lm_head", expects_mma=kind != 0,
            calls=(CONTIGUOUS_HEAD,),
        )
        register(
            table, f"lm_head_dlogits_{name}", lm_head_dlogits_kernel,
            signature={"h_ptr": ptr, "w_ptr": ptr, "tokens_ptr": "*i64", "g_logprob_ptr": "*fp32",
                       "g_entropy_ptr": "*fp32", "entropy_ptr": "*fp32", "max_ptr": "*fp32", "sum_ptr": "*fp32",
                       "dlogits_ptr": ptr, "M": "i32", "V": "i32", "K": "i32", "v_start": "i32", "n_chunk": "i32",
                       "stride_hm": "i64", "stride_hk": "i64", "stride_wv": "i64", "stride_wk": "i64",
                       "temperature": "fp32"},
            configs=[{"KIND": kind, "NATIVE_DOT": True, "HAS_G_ENTROPY": g, **blocks} for g in (False, True)],
            expects_mma=kind != 0, calls=(CallSpecialization("contiguous", ones=CONTIGUOUS_HEAD.ones, divisible=tuple(
                a for a in CONTIGUOUS_HEAD.divisible if a != "k_chunk")),),
        )
