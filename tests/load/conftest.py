"""Load fixtures: the run's figures in pytest's terminal summary."""
from __future__ import annotations

from typing import Any

from fuzz.figures import summary


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in summary():
        terminalreporter.write_line(line)
