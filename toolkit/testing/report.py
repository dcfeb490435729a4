"""What a conformance run found: the checks that passed and those skipped, with why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Report:
    """Outcome of :func:`~lcpress.testing.check_scheme` or :func:`~lcpress.testing.check_cost_model`.

    A failed check raises :class:`AssertionError` instead of being recorded,
    so a report always describes a passing plugin.
    """

    subject: str
    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    #: Set when a cost model cannot run here (no GPU …); then nothing was checked.
    unavailable: str | None = None

    def __str__(self) -> str:
        if self.unavailable:
            return f"{self.subject}: not checked, unavailable here: {self.unavailable}"
        lines = [f"{self.subject}: {len(self.passed)} checks passed"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def require(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``: raise :class:`AssertionError` with ``message``."""
    if not condition:
        raise AssertionError(message)
