"""Figures the fuzz, load and security runs report (printed in pytest's terminal summary).

Test modules add to them as they run; the conftest hooks print them once at the end,
so CI logs carry the numbers the issue asks for (executions, crashes, latencies).
"""
from __future__ import annotations

from collections import Counter

#: campaign → outcome → count (fuzz executions by answer).
COUNTS: dict[str, Counter[str]] = {}
#: free-form lines (latency percentiles, throughput).
LINES: list[str] = []


def record(campaign: str, outcome: str) -> None:
    """Count one execution of ``campaign`` that ended in ``outcome``."""
    COUNTS.setdefault(campaign, Counter())[outcome] += 1


def note(line: str) -> None:
    """A figure to print at the end of the run."""
    LINES.append(line)


def summary() -> list[str]:
    """Every figure as a line, once: the lists are emptied (several conftests may ask)."""
    out = []
    for campaign, outcomes in sorted(COUNTS.items()):
        total = sum(outcomes.values())
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
        out.append(f"fuzz {campaign}: {total} executions ({detail})")
    out += LINES
    COUNTS.clear()
    LINES.clear()
    return out
