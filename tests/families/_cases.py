"""The kinds of test data a family module gives (tests/families/__init__.py says which function gives which)."""

from __future__ import annotations

from precision_kernels.ops.registry import MatchesTorch, NonFinite, OpcheckCase, Raises, Sample

__all__ = ["MatchesTorch", "NonFinite", "OpcheckCase", "Raises", "Sample"]
