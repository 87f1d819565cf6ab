"""A small RL lab on top of precision_kernels: tasks, losses, metrics, checkpoints, warm-up.

The modules here that do not run the model (``tasks``, ``losses``, ``metrics``,
``checkpoint``, ``warmup``) are plain PyTorch and import nothing from
precision_kernels; the model, sampler and learner use only its public API.
This package imports no submodule eagerly, so ``import rl.tasks`` stays cheap.
"""
