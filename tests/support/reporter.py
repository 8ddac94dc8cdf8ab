"""A Reporter that keeps every line, for tests that drive engine pieces without a run."""

from __future__ import annotations

from fscsync.engine.report import Reporter


class Collect(Reporter):
    """Keeps (kind, message) of each line the engine reports, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[str, str]] = []

    def emit(self, kind: str, message: str, length: int | None = None) -> None:
        self.lines.append((kind, message))
