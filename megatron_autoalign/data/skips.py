"""Skipped- and trimmed-record bookkeeping shared by the SFT and DPO preprocessors.

Skips are counted by reason, with the first few record numbers of each kept as examples (so a user can
find them in the input) and, for reasons that carry one (``"unknown_role:chatgpt"``), counts by detail.
Only "bad input" reasons count against --max-bad-fraction: records dropped by policy (too_long,
no_trained_tokens) are expected and never fail a run. Trimmed records are kept, so they are not skips.
"""
from __future__ import annotations

from .conversations import INVALID_REASONS, REASON_WORDS, TRIM_KINDS, DataError

EXAMPLES_PER_REASON = 5
DETAILS_PER_REASON = 20

# What to do about the commonest bad reason, appended to the threshold error.
HINTS = {
    "starts_with_assistant": "drop --strict-roles to trim those turns instead (FastChat's rule)",
    "ends_with_user": "drop --strict-roles to trim those turns instead (FastChat's rule)",
    "missing_key": "check KEY (--key): it names the field that holds the turns",
    "malformed_json": "the input must be a JSON array, JSONL or Parquet of records",
    "not_an_object": "each record must be a JSON object",
    "unknown_role": "rename those roles to human/gpt (or user/assistant) in the data",
    "not_utf8": "re-save the file as UTF-8",
}


def fmt_counts(counts: dict) -> str:
    """'a=1, b=2' in reason order (used in summaries and error messages)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def fmt_details(details: dict) -> str:
    """'chatgpt×8, bing×4': commonest first."""
    return ", ".join(f"{k}×{v}" for k, v in sorted(details.items(), key=lambda kv: (-kv[1], kv[0])))


class SkipCounter:
    def __init__(self, invalid_reasons=INVALID_REASONS):
        self.invalid_reasons = frozenset(invalid_reasons)
        self.counts: dict[str, int] = {}             # manifest "skipped"
        self.examples: dict[str, list[int]] = {}     # manifest "skipped_examples"
        self.details: dict[str, dict[str, int]] = {}  # manifest "skipped_details"

    def add(self, recno: int, reason: str) -> None:
        reason, _, detail = reason.partition(":")
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if len(ex := self.examples.setdefault(reason, [])) < EXAMPLES_PER_REASON:
            ex.append(recno)
        if detail:
            d = self.details.setdefault(reason, {})
            if detail in d or len(d) < DETAILS_PER_REASON:
                d[detail] = d.get(detail, 0) + 1

    def summary(self) -> str:
        return fmt_counts(self.counts)

    def check_threshold(self, input_path: str, records: int, max_bad_fraction: float) -> None:
        """Raise a one-line DataError: the commonest bad reason in plain words, its first record, the
        counts, and what to do."""
        bad = {r: n for r, n in self.counts.items() if r in self.invalid_reasons}
        nbad = sum(bad.values())
        if not records or nbad / records <= max_bad_fraction:
            return
        reason = max(bad, key=lambda r: (bad[r], -self.examples[r][0]))  # ties: the earliest
        seen = f": {fmt_details(self.details[reason])}" if reason in self.details else ""
        hint = HINTS.get(reason, "fix those records")
        raise DataError(
            f"{input_path}: record {self.examples[reason][0]}: {100 * bad[reason] / records:.0f}% of records "
            f"{REASON_WORDS.get(reason, reason)} ({reason}{seen}); {nbad} of {records} records are invalid "
            f"({100 * nbad / records:.2f}% > --max-bad-fraction {max_bad_fraction:g}: {fmt_counts(bad)}). "
            f"{hint[0].upper()}{hint[1:]}, or raise --max-bad-fraction to skip them")

    def manifest(self) -> dict:
        return {"skipped": self.counts, "skipped_examples": self.examples, "skipped_details": self.details}


class TrimCounter:
    """Records kept with some turns dropped (conversations.trim): records and turns per kind."""

    def __init__(self):
        self.records = 0
        self.turns = {k: 0 for k in TRIM_KINDS}
        self.records_by_kind = {k: 0 for k in TRIM_KINDS}
        self.examples: dict[str, list[int]] = {}

    def add(self, recno: int, dropped: dict) -> None:
        self.records += 1
        for kind, n in dropped.items():
            self.turns[kind] += n
            self.records_by_kind[kind] += 1
            if len(ex := self.examples.setdefault(kind, [])) < EXAMPLES_PER_REASON:
                ex.append(recno)

    def manifest(self) -> dict:
        return {"records": self.records, "turns": self.turns, "records_by_kind": self.records_by_kind,
                "examples": self.examples}
