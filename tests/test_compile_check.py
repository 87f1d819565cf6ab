"""The ahead-of-time GPU compile check: audits, and one config per kernel family for sm_80 and sm_90."""

import json
import subprocess
import sys

from precision_kernels.compile_check import has_mma, memory_reductions, reduce_operand_layouts


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
    out = tmp_path / "cc.json"
    proc = subprocess.run([sys.executable, "-m", "precision_kernels.compile_check", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    targets = {(r["kernel"], r["target"]) for r in report["results"]}
    kernels = {k for k, _ in targets}
    assert "round_to" in kernels
    assert all((k, t) in targets for k in kernels for t in ("sm_80", "sm_90"))
    assert report["layout_problems"] == []


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
    """A kernel (a ``*_kernel`` jit function in precision_kernels/kernels/) missing from compile_registry.py
    would silently skip the GPU compile check."""
    import importlib
    import pkgutil

    from precision_kernels import kernels
    from precision_kernels.compile_registry import kernel_specs

    defined = set()
    for mod in pkgutil.iter_modules(kernels.__path__):
        module = importlib.import_module(f"{kernels.__name__}.{mod.name}")
        defined |= {name for name, obj in vars(module).items()
                    if name.endswith("_kernel") and hasattr(obj, "arg_names")}
    registered = {spec.fn.__name__ for spec in kernel_specs().values()}
    assert defined, "found no kernels"
    assert defined <= registered, f"not in compile_registry.py: {sorted(defined - registered)}"
