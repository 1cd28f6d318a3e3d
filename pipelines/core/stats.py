"""Counters that every pipeline step keeps: read, kept, rejected by reason (datatrove-style).

Each step ends by printing `StepStats.table()` and writing `stats.json`; stats of shards
or workers add up with `merge`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepStats:
    step: str
    """The step's name (`stats.json` key `stage`, kept for the files already written)."""
    read: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    extra: Counter = field(default_factory=Counter)
    """Step-specific counts (images fetched, memory hits, tokens, ...)."""
    per_source: dict[str, "StepStats"] = field(default_factory=dict)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def source(self, name: str) -> "StepStats":
        if name not in self.per_source:
            self.per_source[name] = StepStats(step=self.step)
        return self.per_source[name]

    def count_read(self, source: str, n: int = 1) -> None:
        self.read += n
        self.source(source).read += n

    def count_kept(self, source: str, n: int = 1) -> None:
        self.kept += n
        self.source(source).kept += n

    def count_rejected(self, source: str, reason: str, n: int = 1) -> None:
        self.rejected[reason] += n
        self.source(source).rejected[reason] += n

    def merge(self, other: "StepStats") -> "StepStats":
        self.read += other.read
        self.kept += other.kept
        self.rejected.update(other.rejected)
        self.extra.update(other.extra)
        for name, sub in other.per_source.items():
            self.source(name).merge(sub)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.step,
            "read": self.read,
            "kept": self.kept,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "extra": dict(sorted(self.extra.items())),
            "per_source": {k: v.to_dict() for k, v in sorted(self.per_source.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepStats":
        stats = cls(step=data["stage"], read=data["read"], kept=data["kept"])
        stats.rejected.update(data.get("rejected", {}))
        stats.extra.update(data.get("extra", {}))
        for name, sub in data.get("per_source", {}).items():
            stats.per_source[name] = cls.from_dict(sub)
        return stats

    def table(self) -> str:
        """A plain-text table: one line per source, then the total; rejections by reason."""
        rows = [(name, s) for name, s in sorted(self.per_source.items())] + [("TOTAL", self)]
        width = max(len(name) for name, _ in rows)
        lines = [f"[{self.step}]", f"{'source':<{width}}  {'read':>8}  {'kept':>8}  {'rejected':>8}  reasons"]
        for name, s in rows:
            reasons = ", ".join(f"{r}={n}" for r, n in sorted(s.rejected.items())) or "-"
            lines.append(f"{name:<{width}}  {s.read:>8}  {s.kept:>8}  {s.rejected_total:>8}  {reasons}")
        for key, value in sorted(self.extra.items()):
            lines.append(f"  {key}: {value}")
        return "\n".join(lines)
