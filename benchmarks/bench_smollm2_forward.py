"""SmolLM2-135M, all 30 layers: one matched forward on the kernels against torch's own forward, CPU time.

    python -m benchmarks.bench_smollm2_forward [--threads 1] [--repeats 3] [--dtypes fp32 bf16] [--json PATH]

8 left-padded prompts of 4 to ~32 tokens, one ``model(...)`` call with the full logits, no KV
cache, under ``pk.matched_mode()`` against the same call without it, in the same dtype and
process, after one warm-up call each; the best of ``--repeats`` calls in process CPU time (a
shared machine's load moves it little). On a CPU the kernels run on the default executor
(``PK_CPU_EXECUTOR``; the compiled twins unless it says ``interpreter``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

import precision_kernels as pk
from benchmarks._output import OutputPathError, prepare_json_path, write_json
from precision_kernels import cpu_executor
from rl import hf

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPTS = (
    "The capital of France is",
    "Water boils at",
    "def add(a, b):",
    "Once upon a time, in a small village,",
    "The three primary colours of light are red, green and",
    "In 1969, two astronauts walked on the surface of the Moon for the first time, and the mission was",
    "A list of fruit: apple, banana, cherry, date, elderberry, fig, grape, honeydew, kiwi, lemon, mango,",
    "Explain in one short sentence why the sky looks blue during the day and red at sunset when",
)


def best_cpu_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: twins' first call, allocator
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch (and twin) threads, both sides (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per side; the best counts (default 3)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--json", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error(f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}")
    try:
        prepare_json_path(args.json)
    except OutputPathError as e:
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    try:
        base, tokenizer = hf.load_smollm2(dtype=torch.float32)
    except hf.ModelNotInstalledError as e:
        print(f"bench_smollm2_forward: {e}", file=sys.stderr)
        return 2
    ids, mask = hf.encode_prompts(tokenizer, PROMPTS)
    position_ids = hf.positions(mask)
    executor = cpu_executor.active_executor() if pk.backend.device().type == "cpu" else "cuda"
    print(f"SmolLM2-135M, {len(base.model.layers)} layers; {ids.shape[0]} prompts left-padded to {ids.shape[1]} "
          f"tokens; {args.threads} thread(s); executor: {executor}; best of {args.repeats}, process CPU time")
    rows = []
    for name in args.dtypes:
        model = base if name == "fp32" else copy.deepcopy(base).to(DTYPES[name])

        def forward():
            with torch.no_grad():
                return model(ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits

        def matched():
            with pk.matched_mode():
                return forward()

        torch_s = best_cpu_seconds(forward, args.repeats)
        pk_s = best_cpu_seconds(matched, args.repeats)
        rows.append({"dtype": name, "pk_s": pk_s, "torch_s": torch_s, "ratio": pk_s / torch_s})
        print(f"{name}: pk matched {pk_s:.3f} s   torch {torch_s:.3f} s   pk / torch {pk_s / torch_s:.1f}x", flush=True)
    if args.json:
        write_json({"executor": executor, "threads": args.threads, "repeats": args.repeats,
                    "batch": list(ids.shape), "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
