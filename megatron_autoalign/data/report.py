"""The end-of-run report: one table, printed from the manifest (so the file holds the same numbers)."""
from __future__ import annotations

from .conversations import INVALID_REASONS
from .skips import fmt_details


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:5.1f}%" if total else ""


def _first(records: list[int]) -> str:
    return "first records " + ", ".join(map(str, records)) if records else ""


def report_lines(m: dict, kept_key: str, kept_name: str, invalid=INVALID_REASONS) -> list[str]:
    """``m`` is a manifest; ``kept_key`` its count of kept records (num_conversations, num_pairs); reasons
    not in ``invalid`` are marked "(policy)": they never count toward --max-bad-fraction."""
    total, kept = m["num_records"], m[kept_key]
    rows = [("records read", f"{total:,}", m["input"] + (" (cut off: complete records kept)" if m.get("input_truncated") else ""))]
    rows.append((f"{kept_name} kept", f"{kept:,}", _pct(kept, total)))
    trimmed = m.get("trimmed") or {}
    if trimmed.get("records"):
        turns = ", ".join(f"{k} {n:,} turns in {trimmed['records_by_kind'][k]:,} records"
                          for k, n in trimmed["turns"].items() if n)
        rows.append(("  of which trimmed", f"{trimmed['records']:,}", turns))
    nskip = sum(m["skipped"].values())
    rows.append(("skipped", f"{nskip:,}", _pct(nskip, total)))
    for reason, n in sorted(m["skipped"].items(), key=lambda kv: (-kv[1], kv[0])):
        policy = "" if reason in invalid else " (policy)"
        detail = m.get("skipped_details", {}).get(reason)
        note = "; ".join(x for x in (fmt_details(detail) if detail else "",
                                     _first(m["skipped_examples"].get(reason, []))) if x)
        rows.append((f"  {reason}{policy}", f"{n:,}", note))
    rows += [("tokens", f"{m['num_tokens']:,}", ""),
             ("trained tokens", f"{m['num_trained_tokens']:,}", _pct(m["num_trained_tokens"], m["num_tokens"])),
             ("rows", f"{m['num_rows']:,}", f"fill ratio {m['fill_ratio']:.3f}"),
             ("time", f"{m['seconds']:.1f} s", f"{m['tokens_per_s']:,.0f} tokens/s")]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"  {a:<{w0}}  {b:>{w1}}  {c}".rstrip() for a, b, c in rows]
