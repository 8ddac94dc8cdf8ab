"""What a benchmark run measures: tree sizes and repetitions of the full and quick runs.

Kept apart from the scenarios so that the measuring, the workdir checks and the
report can all read the sizes without importing the scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
TOOLS = ("fscsync", "rsync")


@dataclass(frozen=True)
class Config:
    name: str
    big: int
    small_files: int
    small_dirs: int
    many_files: int
    many_dirs: int
    enc_big: int
    enc_files: int
    enc_dirs: int
    changed_blocks: int
    st_big: int
    st_files: int
    st_dirs: int
    """The small tree of S6 (issue 25): start-up weighs more in it than in S1's."""
    reps: int
    more_reps: int
    """Reps of the scenarios whose medians need more of them (Scenario.more_reps) to
    ride out the VM's noisier moments."""

    def describe(self) -> str:
        return (f"S1: {human(self.big)} file + {self.small_files:,} files of 100 B-8 KiB in "
                f"{self.small_dirs} dirs; S2b: {self.many_files:,} files in {self.many_dirs} "
                f"dirs; S3: {human(self.big)} file, {self.changed_blocks} changed 4 KiB blocks; "
                f"S5: encrypted {human(self.enc_big)} file + {self.enc_files:,} encrypted "
                f"files in {self.enc_dirs} dirs, {self.changed_blocks} changed blocks; S6: "
                f"{human(self.st_big)} file + {self.st_files:,} files in {self.st_dirs} dirs")


FULL = Config("full", big=1 * GiB, small_files=10_000, small_dirs=100, many_files=100_000,
              many_dirs=1_000, enc_big=1 * GiB, enc_files=1_000, enc_dirs=10,
              changed_blocks=10, st_big=128 * MiB, st_files=5_000, st_dirs=50, reps=3,
              more_reps=5)
QUICK = Config("quick", big=128 * MiB, small_files=2_000, small_dirs=20, many_files=10_000,
               many_dirs=100, enc_big=128 * MiB, enc_files=200, enc_dirs=4,
               changed_blocks=10, st_big=32 * MiB, st_files=1_000, st_dirs=10, reps=1,
               more_reps=1)


def human(n: float | None, unit: str = "B") -> str:
    if n is None:
        return "-"
    for prefix, size in (("Gi", GiB), ("Mi", MiB), ("Ki", KiB)):
        if abs(n) >= size:
            return f"{n / size:.2f} {prefix}{unit}"
    return f"{int(n)} {unit}"
