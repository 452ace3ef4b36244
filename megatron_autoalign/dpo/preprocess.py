"""Preference pairs (JSON array, JSONL or Parquet) -> DPO idx/bin + manifest.

    python -m megatron_autoalign.dpo.preprocess --input prefs.json --output-prefix out/dpo \
        --hf-model-path Qwen2.5-0.5B-Instruct --seq-len 2048 --template qwen

Same templates, masks, manifest and bad-input rules as SFT (``data/``), with two DPO rules:
- only the final reply (chosen or rejected) is trained; earlier assistant turns are prompt context;
- a pair never splits: each row holds whole pairs as consecutive documents [chosen, rejected, ...];
- the role rules are strict (no trimming): a pair compares two replies to one prompt, and dropping turns
  would change the prompt both replies answer.
``--seq-len`` bounds each sequence (chosen or rejected, prompt included); a packed row holds several
pairs in at most 2 x seq-len tokens, an unpacked row exactly one pair.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..data.conversations import INVALID_REASONS
from ..data.encoder import IGNORE_INDEX, PieceEncoder
from ..data.indexed import AlignedWriter
from ..data.packing import Packer
from ..data.pipeline import (
    add_common_arguments, check_common_arguments, check_output, common_manifest, encoded_in_workers, open_input,
    run_cli, start_encoding,
)
from ..data.readers import load_record
from ..data.report import report_lines
from ..data.skips import SkipCounter
from ..data.templates import TemplateError
from .dataset import DPO_FORMAT, FIELDS
from .pairs import PAIR_INVALID_REASONS, parse_pair

BATCH = 128  # records per worker task
BAD_REASONS = tuple(INVALID_REASONS) + PAIR_INVALID_REASONS  # mismatched prompts are bad input too


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_autoalign.dpo.preprocess", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "preference pairs", "maximum tokens of each sequence (chosen or rejected)")
    return check_common_arguments(p, p.parse_args(argv))


def encode_conversation(penc, template, conv) -> tuple[list[int], np.ndarray]:
    """(ids, labels) with only the LAST assistant reply trained (reply + its end-of-turn token)."""
    ids, labels, turn_ends = penc(template.render(conv))
    labels = np.asarray(labels, dtype=np.int32)
    if len(turn_ends) > 1:
        labels[:turn_ends[-2]] = IGNORE_INDEX  # earlier replies are context, identical on both sides
    return ids, labels


def _first_trained(labels: np.ndarray) -> int:
    nz = np.flatnonzero(labels != IGNORE_INDEX)
    return int(nz[0]) if len(nz) else -1


# --- worker side (state set in the parent before forking) ---------------------------------------------
_W: dict = {}


def _encode_batch(batch):
    key, template, penc, seq_len = _W["key"], _W["template"], _W["penc"], _W["seq_len"]
    pairs, skips = [], []
    for recno, record, reason in batch:
        pair = None
        if reason is None:
            record, reason = load_record(record)  # workers parse the raw JSON text (parallel)
        if reason is None:
            pair, reason = parse_pair(record, key)
        if reason is None:
            try:
                sides = [encode_conversation(penc, template, conv) for conv in pair]
            except TemplateError:
                reason = "template_error"
        if reason is None:
            (ci, cl), (ri, rl) = sides
            pc, pr = _first_trained(cl), _first_trained(rl)
            if max(len(ci), len(ri)) > seq_len:
                reason = "too_long"
            elif pc < 0 or pr < 0:
                reason = "no_trained_tokens"
            elif pc != pr or ci[:pc] != ri[:pr]:
                reason = "template_error"  # the two sides must share the prompt tokens exactly
        if reason is not None:
            skips.append((recno, reason))
            continue
        pairs.append((np.asarray(ci, np.int32), cl, np.asarray(ri, np.int32), rl))
    return pairs, skips


def _sample_texts(batch, key, limit=64):
    out = []
    for _, raw, reason in batch:
        rec, reason = load_record(raw) if reason is None else (None, reason)
        pair, bad = parse_pair(rec, key) if reason is None else (None, reason)
        out += [t for conv in pair or () for _, t in conv]
    return out[:limit]


def run(args) -> dict:
    started = time.perf_counter()
    reader, progress = open_input(args, "pairs")
    tok, enc, template, all_batches = start_encoding(args, reader, BATCH, lambda b: _sample_texts(b, args.key))
    _W.update(key=args.key, template=template, penc=PieceEncoder(enc), seq_len=args.seq_len)

    capacity = 2 * args.seq_len if args.packing else None
    packer = Packer(capacity or 1, args.packing, args.pack_buffer)
    stats = {"records": 0, "pairs": 0, "trained": 0}
    skips = SkipCounter(BAD_REASONS)

    def write_rows(writer, rows):
        for row in rows:  # row: list of pairs; documents in order chosen, rejected, chosen, ...
            docs = [d for pair in row for d in (pair[0], pair[2])]
            labs = [lab for pair in row for lab in (pair[1], pair[3])]
            writer.add_row({"input_ids": np.concatenate(docs), "labels": np.concatenate(labs)},
                           [len(d) for d in docs])

    with encoded_in_workers(_encode_batch, all_batches, args.workers) as results, \
            AlignedWriter(args.output_prefix, FIELDS) as writer:
        for pairs, batch_skips in results:
            for recno, reason in batch_skips:
                skips.add(recno, reason)
            for pair in pairs:
                write_rows(writer, packer.add(len(pair[0]) + len(pair[2]), pair))
                stats["trained"] += int((pair[1] != IGNORE_INDEX).sum() + (pair[3] != IGNORE_INDEX).sum())
            stats["records"] += len(pairs) + len(batch_skips)
            stats["pairs"] += len(pairs)
            progress.update(len(pairs), sum(len(p[0]) + len(p[2]) for p in pairs))
        write_rows(writer, packer.flush())
        progress.close()
        check_output(args, writer, skips, stats["records"], "usable preference pairs")
        manifest = {
            "format": DPO_FORMAT,
            **common_manifest(args, tok, enc, reader, writer, skips, stats["records"],
                              "megatron_autoalign.dpo.preprocess", trained=stats["trained"],
                              row_capacity=capacity or 2 * args.seq_len, started=started),
            "row_capacity": capacity or 2 * args.seq_len,
            "num_pairs": stats["pairs"],
            "reference": None,  # filled by megatron_autoalign.dpo.score_reference
        }
        writer.commit(manifest)
    return manifest


def main(argv=None) -> int:
    return run_cli(parse_args, run, lambda m: report_lines(m, "num_pairs", "pairs", BAD_REASONS), argv)


if __name__ == "__main__":
    sys.exit(main())
