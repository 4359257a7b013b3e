"""The result of ``tierlab validate``: one line per check, the figures behind it, and what to do."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

# skip: not run, because a check it depends on failed (its figures name that check as depends_on).
STATUSES = ("pass", "warn", "fail", "skip")


@dataclass
class CheckResult:
    name: str
    status: str  # pass | warn | fail | skip
    summary: str
    figures: dict[str, Any] = field(default_factory=dict)
    advice: str | None = None


@dataclass
class Report:
    model: str
    checks: list[CheckResult]
    recommendation: str | None = None

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def __getitem__(self, name: str) -> CheckResult:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "ok": self.ok, "recommendation": self.recommendation,
                "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def text(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [f"tierlab validate: {self.model}"]
        for c in self.checks:
            lines.append(f"  {c.status.upper():4}  {c.name.ljust(width)}  {c.summary}")
            if c.advice and c.status != "pass" and c.advice != self.recommendation:  # said once, below
                lines.append(f"        {' ' * width}  -> {c.advice}")
        if self.recommendation:
            lines.append(f"  precision: {self.recommendation}")
        failed = [c.name for c in self.checks if c.status == "fail"]
        skipped = [c.name for c in self.checks if c.status == "skip"]
        lines.append("  result: " + ("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
                     + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
        return "\n".join(lines)

    def __repr__(self) -> str:  # readable in a notebook and a REPL
        return self.text()
