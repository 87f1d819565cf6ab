"""The ahead-of-time GPU compile check: audits, and one config per kernel family for sm_80 and sm_90."""

import json
import os
import subprocess
import sys

import pytest

from precision_kernels.compile_check import (
    has_mma,
    instruction_family,
    memory_reductions,
    reduce_operand_layouts,
    variant_name,
)

RECORD_KEYS = {"kernel", "variant", "target", "registers", "spill_bytes", "spill_allowance", "shared_bytes"}


def _compile_check(tmp_path, *args) -> dict:
    out = tmp_path / "cc.json"
    proc = subprocess.run([sys.executable, "-m", "precision_kernels.compile_check", *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_ptx_audit_is_an_instruction_regex_not_a_substring():
    clean = "\tst.shared.b16 [%r1], %rs1;\n\tld.global.red_flag.b32 %r2, [%rd1];\n\tadd.f32 %f1, %f2, %f3;\n"
    assert memory_reductions(clean) == []
    dirty = clean + "\t@%p3 atom.global.add.f32 %f4, [%rd2], %f1;\n\tred.global.add.f32 [%rd3], %f2;\n" \
                    "\t@!%p1 cp.reduce.async.bulk.global.shared::cta.add.f32 [%rd1], [%r1], 64;\n"
    assert len(memory_reductions(dirty)) == 3


def test_mma_audit():
    assert has_mma("\tmma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%f1}, {%r1}, {%r2}, {%f1};\n")
    assert has_mma("\twgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 1;\n")
    assert not has_mma("\tld.global.mma_like.b32 %r1, [%rd1];\n")


def test_reduce_layouts_are_resolved_through_aliases():
    ttgir = (
        "#blocked = #ttg.blocked<{sizePerThread = [1, 4]}>\n#mma = #ttg.nvidia_mma<{versionMajor = 3}>\n"
        'module {\n  %1 = "tt.reduce"(%0) <{axis = 1 : i32}> ({\n  ^bb0(%a: f32, %b: f32):\n'
        "    tt.reduce.return %c : f32\n  }) : (tensor<64x128xf32, #mma>) -> tensor<64xf32, #ttg.slice<>>\n"
        '  %3 = "tt.reduce"(%2) <{axis = 1 : i32}> ({\n  }) : (tensor<64x128xf32, #blocked>) -> tensor<64xf32>\n}\n'
    )
    assert reduce_operand_layouts(ttgir) == ["#ttg.nvidia_mma<{versionMajor = 3}>",
                                             "#ttg.blocked<{sizePerThread = [1, 4]}>"]


def test_every_kernel_family_compiles_for_sm80_and_sm90(tmp_path):
    report = _compile_check(tmp_path)
    targets = {(r["kernel"], r["target"]) for r in report["records"]}
    kernels = {k for k, _ in targets}
    assert {"round_to", "round_to_fp8"} <= kernels
    assert all((k, t) in targets for k in kernels for t in ("sm_80", "sm_90"))
    assert report["audit_problems"] == []
    for r in report["records"]:
        assert RECORD_KEYS <= set(r)
        assert r["registers"] > 0 and r["shared_bytes"] >= 0 and r["spill_bytes"] >= 0, r  # cuobjdump was read
        assert r["spill_bytes"] <= r["spill_allowance"], r


def test_round_to_compiles_every_fp8_output(tmp_path):
    """``round_to``'s kernel with each fp8 output code ops/rounding.py launches (e4m3fn, e5m2, saturating e5m2),
    stored through a uint8 pointer, compiles for sm_80 and sm_90."""
    from precision_kernels.ops.rounding import FP8_OUT_KIND

    report = _compile_check(tmp_path, "--all", "--kernel", "round_to_fp8")
    compiled = {(r["config"]["OUT_KIND"], r["target"]) for r in report["records"] if r["ok"]}
    assert compiled == {(k, t) for k in FP8_OUT_KIND.values() for t in ("sm_80", "sm_90")}
    assert report["audit_problems"] == []


def test_lm_head_variants_do_not_spill_registers(tmp_path):
    """Every fused LM-head variant of the matched profile (SCORE and SAMPLE, with and without entropy, forward and
    backward; every dtype), compiled generic and as the JIT specialises a contiguous call, has no register spills
    on sm_80 and sm_90 (cuobjdump's stack frame is 0). The engine's split-K variants are in
    ``compile_check --all --only lm_head`` (checked spill-free too, not here: time)."""
    report = _compile_check(tmp_path, "--all", "--only", "lm_head", "--matched-only")
    records = report["records"]
    variants = {(r["kernel"], r["config"].get("MODE"), r["config"].get("WITH_ENTROPY", r["config"].get(
        "HAS_G_ENTROPY")), r["call"], r["target"]) for r in records}
    for dtype in ("fp32", "fp16", "bf16"):
        for target in ("sm_80", "sm_90"):
            for entropy in (False, True):
                for call in ("generic", "contiguous"):
                    assert (f"lm_head_dlogits_{dtype}", None, entropy, call, target) in variants
                    for mode in (0, 1):
                        assert (f"lm_head_{dtype}", mode, entropy, call, target) in variants
    spilling = {(r["kernel"], r["variant"], r["target"]): r["spill_bytes"] for r in records if r["spill_bytes"] != 0}
    assert not spilling, f"register spills (bytes): {spilling}"
    assert report["audit_problems"] == []  # I5: SCORE and SAMPLE still reduce in the same layouts


# The variants of the profile tiles at real head dims (SmolLM2, Llama, Qwen: 64 and 128) that spilled most before the
# tiles were chosen (attention at head dim 128, the engine's split-K matmul with a bias); scaled_mm runs the fp16
# matmul's tiles, whose first config the family sweep above compiles. The whole set, 628 variants:
# ``python -m precision_kernels.compile_check --all`` (``make compile-check``; 15-25 minutes of CPU, cold).
SPILL_SAMPLE = (("attention_fwd_fp16", {"BLOCK_D": "128", "MASK": "1", "SPLIT": "True"}),
                ("attention_bwd_dq_bf16", {"BLOCK_D": "128", "MASK": "1"}),
                ("attention_bwd_dkdv_fp32", {"BLOCK_D": "128", "MASK": "0"}),
                ("matmul_fp16", {"HAS_BIAS": "True", "SPLITS": "4"}))


@pytest.mark.parametrize("kernel, where", SPILL_SAMPLE, ids=[k for k, _ in SPILL_SAMPLE])
def test_profile_tiles_do_not_spill_registers(tmp_path, kernel, where):
    """A sample of the CUDA table's tiles compiles for sm_80 and sm_90, generic and as the JIT specialises a
    contiguous call, within its spill allowance (0 bytes unless compile_registry.SPILL_ALLOWANCES states one)."""
    report = _compile_check(tmp_path, "--all", "--kernel", kernel, *(f"--where={k}={v}" for k, v in where.items()))
    records = [r for r in report["records"] if r["kernel"] == kernel]
    assert {r["target"] for r in records} == {"sm_80", "sm_90"} and len({r["call"] for r in records}) >= 2
    spilling = {(r["variant"], r["target"]): (r["spill_bytes"], r["spill_allowance"]) for r in records
                if r["spill_bytes"] > r["spill_allowance"]}
    assert not spilling, f"register spills over their allowance (bytes, allowance): {spilling}"


def test_a_spilling_tile_fails_the_check():
    """The check fails a variant that spills: matmul_fp16 (split-K, bias) in the 128 x 256 tiles it shipped with, on a
    contiguous linear call (0 bytes allowed; 128 x 128 spills none)."""
    code = ("from precision_kernels.compile_check import kernel_specs, compile_one\n"
            "spec = kernel_specs()['matmul_fp16']\n"
            "linear = next(c for c in spec.calls if c.name == 'linear')\n"
            "r = compile_one(spec, {**spec.configs[-1], 'BLOCK_N': 256}, 90, linear)\n"
            "print(r.spill_bytes, r.spill_allowance, r.ok, r.problems)\n")
    env = dict(os.environ, PK_COMPILE_ONLY="1")
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    spills, allowance, ok, problems = out.stdout.split(" ", 3)
    assert int(spills) > int(allowance) and ok == "False" and "register spills" in problems, out.stdout + out.stderr


def test_spill_allowances_match_kernel_call_and_config(monkeypatch):
    from precision_kernels import compile_registry as reg

    monkeypatch.setattr(reg, "SPILL_ALLOWANCES", (
        reg.SpillAllowance(r"matmul_(fp16|bf16)", ("generic",), {}, 700, "why"),
        reg.SpillAllowance(r"attention_fwd_.*", ("generic", "contiguous"), {"BLOCK_D": 128}, 40, "why")))
    assert reg.spill_allowance("matmul_fp16", {"BLOCK_N": 128}, "generic") == 700
    assert reg.spill_allowance("matmul_fp16", {"BLOCK_N": 128}, "linear") == 0
    assert reg.spill_allowance("matmul_fp32", {}, "generic") == 0
    assert reg.spill_allowance("attention_fwd_fp16", {"BLOCK_D": 128}, "contiguous") == 40
    assert reg.spill_allowance("attention_fwd_fp16", {"BLOCK_D": 64}, "contiguous") == 0


def test_instruction_family_names_how_dots_run():
    assert instruction_family("\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1}, %rd1, %rd2;\n") == "wgmma"
    assert instruction_family("\t@%p1 mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%f1};\n") == "mma.sync"
    assert instruction_family("\tfma.rn.f32 %f1, %f2, %f3, %f1;\n\tst.shared.b16 [%r1], %rs1;\n") == "none"


def test_variant_names_are_unique_per_config():
    a = {"MODE": 1, "KIND": 2, "SPLITS": 1, "WITH_ENTROPY": True, "BLOCK_M": 64, "num_warps": 8}
    assert variant_name(a) == "MODE=SAMPLE,SPLITS=1,WITH_ENTROPY=True,BLOCK_M=64,num_warps=8"
    assert variant_name(a) != variant_name({**a, "BLOCK_M": 128})


def test_only_refuses_an_unknown_family():
    from precision_kernels.compile_check import run

    with pytest.raises(ValueError, match=r"no kernel family \['lm_haed'\]; families: \[.*'lm_head'"):
        run(False, only=["lm_haed"])  # refused before anything compiles


@pytest.mark.parametrize("families, expect", [
    (["lm_head"], {"lm_head_fp32", "lm_head_dlogits_bf16"}),
    (["lm_head_dlogits"], {"lm_head_dlogits_fp16"}),
])
def test_only_selects_a_family_and_its_sub_families(families, expect):
    from precision_kernels.compile_check import _selected

    names = ["lm_head_fp32", "lm_head_dlogits_bf16", "lm_head_dlogits_fp16", "matmul_fp16", "bmm_bf16", "round_to"]
    chosen = {n for n in names if _selected(n, None, families)}
    assert expect <= chosen and not chosen & {"matmul_fp16", "bmm_bf16", "round_to"}
    if families == ["lm_head_dlogits"]:
        assert "lm_head_fp32" not in chosen


def test_layout_audit_can_ignore_order_insensitive_reductions():
    ttgir = (
        "#blocked = #ttg.blocked<{sizePerThread = [1, 4]}>\n#mma = #ttg.nvidia_mma<{versionMajor = 3}>\n"
        '  %1 = "tt.reduce"(%0) <{axis = 1 : i32}> ({\n  ^bb0(%a: f32, %b: f32):\n    %m = arith.maxnumf %a, %b : f32\n'
        "    tt.reduce.return %m : f32\n  }) : (tensor<64x128xf32, #blocked>) -> tensor<64xf32>\n"
        '  %3 = "tt.reduce"(%2) <{axis = 1 : i32}> ({\n  ^bb0(%a: f32, %b: f32):\n    %s = arith.addf %a, %b : f32\n'
        "    tt.reduce.return %s : f32\n  }) : (tensor<64x128xf32, #mma>) -> tensor<64xf32>\n"
    )
    assert len(reduce_operand_layouts(ttgir)) == 2
    assert reduce_operand_layouts(ttgir, order_sensitive_only=True) == ["#ttg.nvidia_mma<{versionMajor = 3}>"]


def test_every_kernel_is_in_the_registration_table():
    """A kernel (a ``*_kernel`` jit function in precision_kernels/kernels/) missing from the compile table (its
    family's ``compile_kernels`` in ops/<family>.py) would silently skip the GPU compile check."""
    import importlib
    import pkgutil

    from precision_kernels import kernels
    from precision_kernels.compile_check import kernel_specs

    defined = set()
    for mod in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{mod.name}")
        defined |= {name for name, obj in vars(module).items()
                    if name.endswith("_kernel") and hasattr(obj, "arg_names")}
    from precision_kernels.ops.registry import all_families

    registered = {spec.fn.__name__ for spec in kernel_specs().values()}
    # the interpreter form of a two-form kernel runs only under the interpreter; its compiled form is registered
    interpreter_forms = {name for family in all_families().values() for name in family.interpreter_forms()}
    assert defined, "found no kernels"
    assert defined - interpreter_forms <= registered, f"not in the compile table: {sorted(defined - registered)}"
