"""Autograd Functions and public functions: validate, pick a config, launch, return.

One module per kernel family (a package rather than DESIGN.md's single ops.py, so
families can be worked on independently).
"""

from .rounding import round_to

__all__ = ["round_to"]
