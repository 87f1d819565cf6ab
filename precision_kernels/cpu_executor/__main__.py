"""``python -m precision_kernels.cpu_executor --warm``: compile every twin into numba's cache (``make setup``)."""

import argparse
import time

from . import warm

parser = argparse.ArgumentParser(prog="python -m precision_kernels.cpu_executor")
parser.add_argument("--warm", action="store_true", help="compile every CPU twin into numba's cache")
if parser.parse_args().warm:
    start = time.perf_counter()
    for name, seconds in warm().items():
        print(f"cpu executor: {name} twins ready in {seconds:.1f} s")
    print(f"cpu executor: all twins ready in {time.perf_counter() - start:.1f} s")
else:
    parser.print_help()
