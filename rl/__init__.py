"""A small RL lab on top of precision_kernels: tasks, losses, metrics, checkpoints, warm-up.

The modules here that do not run the model (``tasks``, ``losses``, ``metrics``,
``checkpoint``, ``decoding``, ``warmup``, ``distributed``) are plain PyTorch and import nothing from
precision_kernels; the model, sampler, learner, ``reference_model`` (the plain-torch
path over the model's parameters), ``mismatch``, ``train`` and ``demo`` use only its
public API. Nothing here imports ``benchmarks``.
This package imports no submodule eagerly, so ``import rl.tasks`` stays cheap.
"""
