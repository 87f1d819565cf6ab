"""``make demo``: train the sanity recipe in fp16 matched, then print the quick mismatch table.

    python -m rl.demo
"""

from __future__ import annotations

import sys
import time

from benchmarks import mismatch
from rl.train import build_parser, train


def main() -> int:
    t0 = time.perf_counter()
    print("== 1/2  RL on the kernels: reverse a 6-digit string, fp16, matched profile ==", flush=True)
    args = build_parser().parse_args(["--out", "runs/demo", "--stop-at", "0.95"])
    summary = train(args)
    print("\n== 2/2  sampler vs learner mismatch of the trained policy (benchmarks.mismatch --quick) ==",
          flush=True)
    rc = mismatch.main(["--quick", "--checkpoint", "runs/demo/checkpoint.pt", "--json", "runs/demo/mismatch.json",
                        "--png", "runs/demo/mismatch.png"])
    print(f"\nmetrics: runs/demo/metrics.jsonl   summary: runs/demo/summary.json   "
          f"plot: runs/demo/mismatch.png   ({time.perf_counter() - t0:.0f}s in all)")
    ok = summary["final_accuracy"] >= 0.95 and rc == 0
    if not ok:
        print("note: the demo did not reach 95% greedy accuracy or a matched row was non-zero; see above.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
