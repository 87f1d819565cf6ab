"""Ahead-of-time GPU compile check: every kernel in ``compile_registry.py``, for sm_80 and sm_90, no GPU needed.

    python -m precision_kernels.compile_check          # first config of one kernel per family
    python -m precision_kernels.compile_check --all    # every registered config

Each kernel is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
in a process where ``PK_COMPILE_ONLY=1`` makes ``backend.py`` define compiled (not
interpreted) kernels. Audits:

* PTX: no atomics or reductions to memory (an instruction regex, not a substring:
  ``"red." in ptx`` would match ``st.shared.b16``);
* PTX of fp16/bf16 matmul-family kernels contains ``mma``/``wgmma`` instructions;
* TTGIR (invariant I5): kernels registered in one ``reduce_layout_group`` (the
  fused LM-head kernel's SCORE and SAMPLE modes) must run their order-sensitive
  (summing) reductions on operands of the same layouts, config by config. Max/min
  reductions are exact in any order (SAMPLE's Gumbel argmax and both modes' target
  pick are such), so their layouts may differ.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

TARGETS = (80, 90)
LAUNCH_OPTIONS = ("num_warps", "num_stages")
MEMORY_REDUCTION = re.compile(r"^\s*(@!?%p\d+\s+)?(atom|red|cp\.reduce\.async\.bulk|multimem\.red)\.", re.M)
MMA_INSTRUCTION = re.compile(r"^\s*(@!?%p\d+\s+)?(mma|wgmma)\.", re.M)
_LAYOUT_ALIAS = re.compile(r"^(#[\w.]+)\s*=\s*(.+)$", re.M)


@dataclass
class CheckResult:
    kernel: str
    config: dict
    target: str
    ok: bool
    seconds: float = 0.0
    registers: int | None = None
    spills: int | None = None
    reduce_layouts: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def memory_reductions(ptx: str) -> list[str]:
    """PTX lines that are atomics or reductions to memory."""
    return [m.group(0).strip() for m in MEMORY_REDUCTION.finditer(ptx)]


def has_mma(ptx: str) -> bool:
    return MMA_INSTRUCTION.search(ptx) is not None


def reduce_operand_layouts(ttgir: str, order_sensitive_only: bool = False) -> list[str]:
    """Resolved layouts of every ``tt.reduce`` operand, in order of appearance.

    Alias names (``#mma``, ``#blocked1``) are replaced by their definitions, so two
    modules compare by what the layouts are, not by what they are called. With
    ``order_sensitive_only``, only reductions whose combine region adds floats
    (``arith.addf``) count: a max/min (or an exact selection such as picking one
    finite value among -infs) gives the same bits in any order and any layout, a sum does not.
    """
    aliases = {m.group(1): m.group(2).strip() for m in _LAYOUT_ALIAS.finditer(ttgir)}
    # The combine region sits between `({` and `})`; operand types follow: `}) : (tensor<...>, ...) ->`
    layouts = []
    for m in re.finditer(r'"tt\.reduce"(.*?)\}\)\s*:\s*\((.*?)\)\s*->', ttgir, re.S):
        if order_sensitive_only and "arith.addf" not in m.group(1):
            continue
        for tensor_type in re.findall(r"tensor<[^>]*>", m.group(2)):
            enc = tensor_type.rsplit(",", 1)[-1].rstrip(">").strip()
            layouts.append(aliases.get(enc, enc))
    return layouts


def _load_kernels() -> dict:
    from .compile_registry import kernel_specs

    return kernel_specs()


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """Registers and spill bytes from cuobjdump, when Triton ships it."""
    try:
        import triton.backends.nvidia as nv

        tool = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                 timeout=30).stdout
        regs = re.search(r"REG:(\d+)", out)
        spills = re.search(r"STACK:(\d+)", out)
        return (int(regs.group(1)) if regs else None, int(spills.group(1)) if spills else None)
    except Exception:
        return None, None


def compile_one(spec, config: dict, cc: int) -> CheckResult:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import backend

    result = CheckResult(spec.name, config, f"sm_{cc}", ok=False)
    start = time.perf_counter()
    try:
        constexprs = {k: v for k, v in config.items() if k in spec.fn.arg_names}
        # num_warps / num_stages in a config are launch options, compiled as the launch uses them
        options = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
        signature = {name: ("constexpr" if name in constexprs else spec.signature[name])
                     for name in spec.fn.arg_names}
        compiled = triton.compile(ASTSource(spec.fn, signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", cc, 32),
                                  options={"enable_fp_fusion": backend.FP_FUSION, **options})
        ptx = compiled.asm["ptx"]
        bad = memory_reductions(ptx)
        if bad:
            result.problems.append(f"atomics/reductions to memory: {bad[:3]}")
        if spec.expects_mma and not has_mma(ptx):
            result.problems.append("no mma/wgmma instruction in a tensor-core kernel")
        result.reduce_layouts = reduce_operand_layouts(compiled.asm["ttgir"], order_sensitive_only=True)
        result.registers, result.spills = _resource_usage(compiled.asm["cubin"])
        result.ok = not result.problems
    except Exception as exc:  # report, keep checking the rest
        result.problems.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
    result.seconds = time.perf_counter() - start
    return result


def audit_reduce_layouts(results: list[CheckResult], kernels: dict) -> list[str]:
    """I5: within a reduce-layout group, every member reduces the same set of layouts per config and target."""
    groups: dict[tuple, dict[str, set]] = {}
    for r in results:
        spec = kernels[r.kernel]
        if spec.reduce_layout_group is None or not r.ok:
            continue
        shared = tuple(sorted((k, v) for k, v in r.config.items() if k != "MODE"))
        key = (spec.reduce_layout_group, r.target, shared)
        groups.setdefault(key, {})[f"{r.kernel}{r.config.get('MODE', '')}"] = set(r.reduce_layouts)
    problems = []
    for (group, target, shared), members in groups.items():
        distinct = {frozenset(v) for v in members.values()}
        if len(distinct) > 1:
            problems.append(f"{group} {target} {dict(shared)}: reduce layouts differ between {sorted(members)}")
    return problems


def run(all_configs: bool, only: str | None = None) -> tuple[list[CheckResult], list[str]]:
    kernels = _load_kernels()
    results = []
    specs = list(kernels.values()) if all_configs else _one_per_family(kernels)
    for spec in specs:
        if only and only not in spec.name:
            continue
        configs = spec.configs if all_configs else _first_per_group(spec)
        for config in configs:
            for cc in TARGETS:
                results.append(compile_one(spec, config, cc))
    return results, audit_reduce_layouts(results, kernels)


def _one_per_family(kernels: dict) -> list:
    """The reduced sweep's kernels: one per family (the name without its _fp32/_fp16/_bf16 suffix),
    a tensor-core one where the family has any."""
    families: dict[str, list] = {}
    for spec in kernels.values():
        families.setdefault(re.sub(r"_(fp32|fp16|bf16)$", "", spec.name), []).append(spec)
    return [next((s for s in members if s.expects_mma), members[0]) for members in families.values()]


def _first_per_group(spec) -> list[dict]:
    """The reduced sweep: the first config, plus its partner in every MODE for the I5 audit."""
    first = spec.configs[0]
    if "MODE" not in first:
        return [first]
    rest = {k: v for k, v in first.items() if k != "MODE"}
    return [c for c in spec.configs if {k: v for k, v in c.items() if k != "MODE"} == rest]


def _print_table(results: list[CheckResult], layout_problems: list[str]) -> None:
    print(f"{'kernel':<28} {'config':<56} {'target':<6} {'regs':>5} {'spill':>5} {'secs':>5}  ok")
    for r in results:
        cfg = ",".join(f"{k}={v}" for k, v in r.config.items() if k not in ("NATIVE_DOT",))
        regs = "-" if r.registers is None else str(r.registers)
        spills = "-" if r.spills is None else str(r.spills)
        print(f"{r.kernel:<28} {cfg[:56]:<56} {r.target:<6} {regs:>5} {spills:>5} {r.seconds:5.1f}  "
              f"{'ok' if r.ok else 'FAIL: ' + '; '.join(r.problems)}")
    for p in layout_problems:
        print(f"I5 layout audit FAIL: {p}")
    n_ok = sum(r.ok for r in results)
    print(f"{n_ok}/{len(results)} compiled and passed the PTX audits; "
          f"I5 layout audit: {'ok' if not layout_problems else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="compile every registered config")
    parser.add_argument("--kernel", help="only kernels whose name contains this")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)

    if os.environ.get("PK_COMPILE_ONLY", "") in ("", "0"):
        # Kernels defined under the interpreter cannot be compiled: rerun in a clean process.
        env = dict(os.environ, PK_COMPILE_ONLY="1")
        env.pop("TRITON_INTERPRET", None)
        return subprocess.call([sys.executable, "-m", "precision_kernels.compile_check", *(argv or sys.argv[1:])],
                               env=env)

    results, layout_problems = run(args.all, args.kernel)
    _print_table(results, layout_problems)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [asdict(r) for r in results], "layout_problems": layout_problems}, f, indent=1)
    return 0 if results and all(r.ok for r in results) and not layout_problems else 1


if __name__ == "__main__":
    sys.exit(main())
