"""A small RL lab on top of precision_kernels: tasks, losses, metrics, checkpoints, warm-up.

The modules here that do not run the kernels (``tasks``, ``task_views``, ``policy``, ``losses``,
``metrics``, ``checkpoint``, ``decoding``, ``rollout``, ``warmup``, ``distributed``, and
``torch_model``, the same model in plain PyTorch over the kernel model's parameters) import
nothing from precision_kernels; the policies (``model``, ``hf_policy``, ``policies``), ``hf``,
sampler, learner, ``mismatch``, ``train``, ``train_flags`` and ``demo`` use only its public
API. Nothing here imports ``benchmarks``, and the modules' imports form no circle (``tests/test_import_graph.py``).
This package imports no submodule eagerly, so ``import rl.tasks`` stays cheap.
"""
