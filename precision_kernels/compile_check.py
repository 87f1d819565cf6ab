"""Ahead-of-time GPU compile check: every kernel in ``compile_registry.py``, for sm_80 and sm_90, no GPU needed.

    python -m precision_kernels.compile_check          # first config of one kernel per family
    python -m precision_kernels.compile_check --all    # every registered config
    python -m precision_kernels.compile_check --all --only lm_head --json out.json   # one family's variants

Kernels whose registration names a runtime call specialisation (``compile_registry.
CallSpecialization``: arguments equal to 1, arguments divisible by 16) are compiled both
generic and so specialised, since Triton's JIT compiles the specialised kernel for such a
call (the fused LM head on contiguous operands: other registers, other spills).

``--json`` writes one record per kernel variant and target: ``kernel``, ``variant`` (its
constexprs and launch options, and ``CALL=`` a call specialisation), ``target``
("sm_80"/"sm_90"), ``registers``, ``spill_bytes`` and ``shared_bytes``, plus the call,
config, instruction family and audit outcome. Offline, registers and spill bytes come from the bundled
``cuobjdump --dump-resource-usage`` (``REG`` and ``STACK``: a Triton kernel has no local
arrays, so its stack frame is its register spills; ``CompiledKernel.n_spills`` is only
filled in when a GPU driver loads the kernel); shared bytes are the compiled kernel's
``metadata.shared`` (Triton's dynamic shared memory).

Each kernel is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``
in a process where ``PK_COMPILE_ONLY=1`` makes ``backend.py`` define compiled (not
interpreted) kernels. Audits:

* PTX: no atomics or reductions to memory (an instruction regex, not a substring:
  ``"red." in ptx`` would match ``st.shared.b16``);
* PTX of fp16/bf16 matmul-family kernels contains ``mma``/``wgmma`` instructions;
* one instruction family (``wgmma``, ``mma.sync`` or none) in every config of a kernel,
  per target (and per head dim, ``BLOCK_D``, whose tiles attention picks): the configs of the M buckets
  must not change how a dot product is summed;
* register spills (cuobjdump's stack frame): 0 bytes for every variant, but those
  ``compile_registry.SPILL_ALLOWANCES`` states, each up to its bound;
* TTGIR (invariant I5): kernels registered in one ``reduce_layout_group`` (the
  fused LM-head kernel's SCORE and SAMPLE modes) must run their order-sensitive
  (summing) reductions on operands of the same layouts, config by config. Max/min
  reductions are exact in any order (SAMPLE's Gumbel argmax and both modes' target
  pick are such), so their layouts may differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

from . import compile_registry
from .ops.registry import all_families

TARGETS = (80, 90)
LAUNCH_OPTIONS = ("num_warps", "num_stages")
MEMORY_REDUCTION = re.compile(r"^\s*(@!?%p\d+\s+)?(atom|red|cp\.reduce\.async\.bulk|multimem\.red)\.", re.M)
MMA_INSTRUCTION = re.compile(r"^\s*(@!?%p\d+\s+)?(mma|wgmma)\.", re.M)
# Config keys that say how a kernel is tiled, not what it computes (left out of the family/variant keys).
_SKIP_IN_VARIANT = ("KIND",)
_MODE_NAMES = {0: "SCORE", 1: "SAMPLE"}
_LAYOUT_ALIAS = re.compile(r"^(#[\w.]+)\s*=\s*(.+)$", re.M)


@dataclass
class CheckResult:
    """One kernel variant compiled for one target (one JSON record)."""

    kernel: str
    variant: str
    target: str
    call: str = "generic"         # the runtime specialisation compiled ("generic": none)
    registers: int | None = None
    spill_bytes: int | None = None
    spill_allowance: int = 0      # the bytes compile_registry.SPILL_ALLOWANCES lets it spill
    shared_bytes: int | None = None
    instruction_family: str | None = None
    config: dict = field(default_factory=dict)
    ok: bool = False
    seconds: float = 0.0
    reduce_layouts: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def variant_name(config: dict) -> str:
    """A config as a short unique string: MODE by name, the dtype (in the kernel's name) left out."""
    return ",".join(f"{k}={_MODE_NAMES.get(v, v) if k == 'MODE' else v}" for k, v in config.items()
                    if k not in _SKIP_IN_VARIANT)


def family_of(kernel_name: str) -> str:
    """Kernel family: the registered name without its _fp32/_fp16/_bf16 suffix."""
    return re.sub(r"_(fp32|fp16|bf16)$", "", kernel_name)


def memory_reductions(ptx: str) -> list[str]:
    """PTX lines that are atomics or reductions to memory."""
    return [m.group(0).strip() for m in MEMORY_REDUCTION.finditer(ptx)]


def has_mma(ptx: str) -> bool:
    return MMA_INSTRUCTION.search(ptx) is not None


def instruction_family(ptx: str) -> str:
    """How the kernel's dot products run: "wgmma" (sm_90 warp-group MMA), "mma.sync" (warp MMA) or "none"
    (FMA, e.g. fp32 with input_precision="ieee"). A kernel mixing both reports "wgmma+mma.sync"."""
    kinds = {m.group(2) for m in MMA_INSTRUCTION.finditer(ptx)}
    names = [name for key, name in (("wgmma", "wgmma"), ("mma", "mma.sync")) if key in kinds]
    return "+".join(names) or "none"


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


def kernel_specs() -> dict:
    """Every kernel the compile check knows, by name (a ``compile_registry.KernelSpec`` with its ``family``): each
    op family's ``compile_kernels``, in registry order."""
    table = {}
    for family in all_families().values():
        if family.compile_kernels is None:
            continue
        part = {}
        family.compile_kernels(part)
        for name, spec in part.items():
            if name in table:
                raise ValueError(f"kernel {name!r} is registered by families {table[name].family!r} "
                                 f"and {family.name!r}")
            table[name] = dataclasses.replace(spec, family=family.name)
    return table


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """Registers and spill bytes (the stack frame) from the bundled cuobjdump; None where it is missing."""
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


def compile_one(spec, config: dict, cc: int, call=None) -> CheckResult:
    """Compile one config for sm_{cc}: the generic signature, or as the JIT specialises ``call``
    (a compile_registry.CallSpecialization); audit the PTX; read registers, spills and shared memory."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import backend

    variant = variant_name(config) + (f",CALL={call.name}" if call else "")
    result = CheckResult(spec.name, variant, f"sm_{cc}", call.name if call else "generic", config=dict(config))
    start = time.perf_counter()
    try:
        constexprs = {k: v for k, v in config.items() if k in spec.fn.arg_names}
        attrs = {}
        if call:
            constexprs.update({name: 1 for name in call.ones})
            attrs = {(spec.fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in call.divisible}
        # num_warps / num_stages in a config are launch options, compiled as the launch uses them
        options = {k: v for k, v in config.items() if k in LAUNCH_OPTIONS}
        signature = {name: ("constexpr" if name in constexprs else spec.signature[name])
                     for name in spec.fn.arg_names}
        compiled = triton.compile(ASTSource(spec.fn, signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", cc, 32),
                                  options={"enable_fp_fusion": backend.FP_FUSION, **options})
        ptx = compiled.asm["ptx"]
        bad = memory_reductions(ptx)
        if bad:
            result.problems.append(f"atomics/reductions to memory: {bad[:3]}")
        if spec.expects_mma and not has_mma(ptx):
            result.problems.append("no mma/wgmma instruction in a tensor-core kernel")
        result.instruction_family = instruction_family(ptx)
        result.reduce_layouts = reduce_operand_layouts(compiled.asm["ttgir"], order_sensitive_only=True)
        result.registers, result.spill_bytes = _resource_usage(compiled.asm["cubin"])
        result.shared_bytes = compiled.metadata.shared
        result.spill_allowance = compile_registry.spill_allowance(spec.name, config, result.call)
        if result.spill_bytes is None:
            result.problems.append("register spills unknown (cuobjdump's resource usage not read)")
        elif result.spill_bytes > result.spill_allowance:
            allowed = f" (allowance {result.spill_allowance})" if result.spill_allowance else ""
            result.problems.append(f"register spills: {result.spill_bytes} bytes{allowed}")
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
        key = (spec.reduce_layout_group, r.target, r.call, shared)
        groups.setdefault(key, {})[f"{r.kernel}{r.config.get('MODE', '')}"] = set(r.reduce_layouts)
    problems = []
    for (group, target, call, shared), members in groups.items():
        distinct = {frozenset(v) for v in members.values()}
        if len(distinct) > 1:
            problems.append(f"{group} {target} {call} {dict(shared)}: reduce layouts differ between "
                            f"{sorted(members)}")
    return problems


def audit_instruction_families(results: list[CheckResult]) -> list[str]:
    """Every config of a kernel (M buckets, modes, splits) runs its dots in one instruction family per target and
    head dim: attention's tiles are chosen per head dim (``BLOCK_D``), and a model launches one head dim only."""
    families: dict[tuple, dict[str, str]] = {}
    for r in results:
        if r.ok:
            key = (r.kernel, r.target, r.config.get("BLOCK_D"))
            families.setdefault(key, {})[r.variant] = r.instruction_family
    return [f"{kernel} {target}{'' if block_d is None else f' BLOCK_D={block_d}'}: instruction families differ "
            f"between configs: {found}" for (kernel, target, block_d), found in families.items()
            if len(set(found.values())) > 1]


def _selected(name: str, kernel_filter: str | None, only: list[str] | None) -> bool:
    if kernel_filter and kernel_filter not in name:
        return False
    family = family_of(name)
    return not only or any(family == f or family.startswith(f + "_") for f in only)


def run(all_configs: bool, kernel_filter: str | None = None, only: list[str] | None = None,
        matched_only: bool = False, where: dict | None = None) -> tuple[list[CheckResult], list[str]]:
    """Compile the selected kernels for every target -> (results, audit problems across configs).

    ``only``: families (``family_of``) to keep, a family also covering its sub-families
    (``lm_head`` covers ``lm_head_dlogits``); ``kernel_filter``: a substring of the kernel name;
    ``matched_only``: leave out the engine profile's split-K configs (SPLITS > 1); ``where``: keep only the configs
    holding these constexpr values (compared as strings: ``{"BLOCK_D": "128"}``).
    """
    kernels = kernel_specs()
    if only:
        unknown = [f for f in only if not any(_selected(n, None, [f]) for n in kernels)]
        if unknown:
            known = sorted({family_of(n) for n in kernels})
            raise ValueError(f"--only: no kernel family {unknown}; families: {known}")
    results = []
    specs = list(kernels.values()) if all_configs else _one_per_family(kernels)
    for spec in specs:
        if not _selected(spec.name, kernel_filter, only):
            continue
        configs = spec.configs if all_configs else _first_per_group(spec)
        if matched_only:
            configs = [c for c in configs if c.get("SPLITS", 1) == 1]
        if where:
            configs = [c for c in configs if all(str(c.get(k)) == v for k, v in where.items())]
        for config in configs:
            for call in (None, *spec.calls):
                for cc in TARGETS:
                    results.append(compile_one(spec, config, cc, call))
    return results, audit_reduce_layouts(results, kernels) + audit_instruction_families(results)


def _one_per_family(kernels: dict) -> list:
    """The reduced sweep's kernels: one per family (the name without its _fp32/_fp16/_bf16 suffix),
    a tensor-core one where the family has any."""
    families: dict[str, list] = {}
    for spec in kernels.values():
        families.setdefault(family_of(spec.name), []).append(spec)
    return [next((s for s in members if s.expects_mma), members[0]) for members in families.values()]


def _first_per_group(spec) -> list[dict]:
    """The reduced sweep: the first config, plus its partner in every MODE for the I5 audit."""
    first = spec.configs[0]
    if "MODE" not in first:
        return [first]
    rest = {k: v for k, v in first.items() if k != "MODE"}
    return [c for c in spec.configs if {k: v for k, v in c.items() if k != "MODE"} == rest]


def _print_table(results: list[CheckResult], audit_problems: list[str]) -> None:
    print(f"{'kernel':<24} {'variant':<60} {'target':<6} {'regs':>4} {'spill':>5} {'smem':>6} {'secs':>5}  ok")
    for r in results:
        regs = "-" if r.registers is None else str(r.registers)
        spills = "-" if r.spill_bytes is None else str(r.spill_bytes)
        smem = "-" if r.shared_bytes is None else str(r.shared_bytes)
        print(f"{r.kernel:<24} {r.variant[:60]:<60} {r.target:<6} {regs:>4} {spills:>5} {smem:>6} {r.seconds:5.1f}  "
              f"{'ok' if r.ok else 'FAIL: ' + '; '.join(r.problems)}")
    for p in audit_problems:
        print(f"audit FAIL: {p}")
    n_ok = sum(r.ok for r in results)
    spilling = sum(bool(r.spill_bytes) for r in results)
    allowed = sum(bool(r.spill_bytes) and r.spill_bytes <= r.spill_allowance for r in results)
    print(f"{n_ok}/{len(results)} compiled and passed the PTX and spill audits; {spilling} with register spills "
          f"({allowed} within a stated allowance); "
          f"I5 layout and instruction-family audits: {'ok' if not audit_problems else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--all", action="store_true", help="compile every registered config")
    parser.add_argument("--kernel", help="only kernels whose name contains this")
    parser.add_argument("--only", action="append", metavar="FAMILY",
                        help="only this kernel family, e.g. lm_head (its dtypes and sub-families; repeatable)")
    parser.add_argument("--matched-only", action="store_true",
                        help="leave out the engine profile's split-K configs (SPLITS > 1)")
    parser.add_argument("--where", action="append", metavar="KEY=VALUE", default=[],
                        help="only configs with this constexpr value, e.g. BLOCK_D=128 (repeatable)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    bad = [w for w in args.where if "=" not in w]
    if bad:
        parser.error(f"--where takes KEY=VALUE, got {bad}")
    where = dict(w.split("=", 1) for w in args.where)

    if os.environ.get("PK_COMPILE_ONLY", "") in ("", "0"):
        # Kernels defined under the interpreter cannot be compiled: rerun in a clean process.
        env = dict(os.environ, PK_COMPILE_ONLY="1")
        env.pop("TRITON_INTERPRET", None)
        return subprocess.call([sys.executable, "-m", "precision_kernels.compile_check", *(argv or sys.argv[1:])],
                               env=env)

    try:
        results, audit_problems = run(args.all, args.kernel, args.only, args.matched_only, where)
    except ValueError as exc:
        parser.error(str(exc))
    _print_table(results, audit_problems)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"records": [asdict(r) for r in results], "audit_problems": audit_problems}, f, indent=1)
    return 0 if results and all(r.ok for r in results) and not audit_problems else 1


if __name__ == "__main__":
    sys.exit(main())
