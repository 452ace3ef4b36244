"""Skipped-record bookkeeping shared by the SFT and DPO preprocessors.

Skips are counted by reason, with the first few record numbers of each kept as examples (so a user can
find them in the input). Only "bad input" reasons count against --max-bad-fraction: records dropped by
policy (too_long, no_trained_tokens) are expected and never fail a run.
"""
from __future__ import annotations

from .conversations import INVALID_REASONS, DataError

EXAMPLES_PER_REASON = 5


def fmt_counts(counts: dict) -> str:
    """'a=1, b=2' in reason order (used in summaries and error messages)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


class SkipCounter:
    def __init__(self, invalid_reasons=INVALID_REASONS):
        self.invalid_reasons = frozenset(invalid_reasons)
        self.counts: dict[str, int] = {}           # manifest "skipped"
        self.examples: dict[str, list[int]] = {}   # manifest "skipped_examples"

    def add(self, recno: int, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(ex := self.examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            ex.append(recno)

    def summary(self) -> str:
        return fmt_counts(self.counts)

    def check_threshold(self, input_path: str, records: int, max_bad_fraction: float) -> None:
        """Raise a one-line DataError naming the commonest bad reason and its first record."""
        bad = {r: n for r, n in self.counts.items() if r in self.invalid_reasons}
        nbad = sum(bad.values())
        if records and nbad / records > max_bad_fraction:
            reason = max(bad, key=bad.get)
            raise DataError(f"{input_path}: record {self.examples[reason][0]}: {reason} "
                            f"({nbad} of {records} records invalid = {100 * nbad / records:.2f}% > "
                            f"{100 * max_bad_fraction:g}%: {fmt_counts(bad)})")
