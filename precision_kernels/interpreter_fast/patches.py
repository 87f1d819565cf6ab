"""The record of what one fast path replaced, so that it can be put back."""

from __future__ import annotations


class Patches:
    """Attributes replaced by one installer, with their originals, restored in reverse order."""

    def __init__(self) -> None:
        self._saved: list[tuple[object, str, bool, object]] = []

    def set(self, obj: object, name: str, value: object) -> None:
        had = name in vars(obj)
        self._saved.append((obj, name, had, vars(obj).get(name)))
        setattr(obj, name, value)

    def targets(self) -> list[tuple[object, str]]:
        """The (object, attribute name) pairs replaced so far."""
        return [(obj, name) for obj, name, _, _ in self._saved]

    def restore(self) -> None:
        while self._saved:
            obj, name, had, original = self._saved.pop()
            if had:
                setattr(obj, name, original)
            else:
                delattr(obj, name)
