"""``make demo``: train the sanity recipe in fp16 matched, then print the quick mismatch table.

    python -m rl.demo

Exits 1 when the run did not reach 95% greedy accuracy or a matched mismatch row is not
exactly zero (``demo_failures``), 0 otherwise. The rows go to ``runs/demo/mismatch.json``;
plot them with ``python -m benchmarks.mismatch --records runs/demo/mismatch.json --png PATH``.
"""

from __future__ import annotations

import json
import sys
import time

from rl.metrics import json_safe
from rl.mismatch import format_headline, format_table, matched_rows_zero, must_match, nonzero, run
from rl.output_paths import write_output
from rl.train import build_parser, train

TARGET_ACCURACY = 0.95


def demo_failures(final_accuracy: float, records: list[dict], target: float = TARGET_ACCURACY) -> list[str]:
    """Why the demo failed: an empty list when it reached ``target`` and every matched row is exactly zero."""
    failures = []
    if not final_accuracy >= target:  # NaN (never evaluated) fails too
        failures.append(f"greedy accuracy {final_accuracy:.1%} is below {target:.0%}")
    if not any(must_match(r) for r in records):
        failures.append("no matched mismatch row was measured")
    elif not matched_rows_zero(records):
        bad = [f"{r['precision']}/{r['head']}/{r.get('sampler', r['precision'])}" for r in records
               if must_match(r) and nonzero(r)]
        failures.append(f"matched rows with a non-zero mismatch: {', '.join(bad)}")
    return failures


def main() -> int:
    t0 = time.perf_counter()
    print("== 1/2  RL on the kernels: reverse a 6-digit string, fp16, matched profile ==", flush=True)
    args = build_parser().parse_args(["--out", "runs/demo", "--stop-at", str(TARGET_ACCURACY), "--overwrite"])
    summary = train(args)
    print("\n== 2/2  sampler vs learner mismatch of the trained policy (rl.mismatch, quick) ==", flush=True)
    records, source = run(quick=True, checkpoint="runs/demo/checkpoint.pt")
    print(f"policy: {source}; 32 prompts of the reverse task, temperature 1")
    print(format_table(records))
    print("\n" + format_headline(records))
    # strict JSON (a figure that is not finite is null), written by rl.output_paths' rule
    write_output(json.dumps(json_safe(records), indent=1, allow_nan=False), "runs/demo/mismatch.json")
    print(f"\nmetrics: runs/demo/metrics.jsonl   summary: runs/demo/summary.json   "
          f"mismatch: runs/demo/mismatch.json   ({time.perf_counter() - t0:.0f}s in all)")
    failures = demo_failures(summary["final_accuracy"], records)
    for reason in failures:
        print(f"DEMO FAILED: {reason}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
