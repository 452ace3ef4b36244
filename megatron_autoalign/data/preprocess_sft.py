"""Chat conversations (JSON array, JSONL or Parquet; sharegpt, OpenAI messages or alpaca) -> SFT idx/bin +
manifest.

    python -m megatron_autoalign.data.preprocess_sft --input data.json --output-prefix out/sft \
        --hf-model-path Qwen2.5-0.5B-Instruct --seq-len 2048 --template qwen

Conversations that break the role order are trimmed (FastChat's rule: leading assistant turns and
trailing user turns are dropped; see data/conversations.py), unless --strict-roles. Bad records are
skipped and counted by reason; if more than --max-bad-fraction of the records are bad the run fails before
anything is written (one-line error, exit code 2). Every run ends with a report (also in the manifest).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from .conversations import conversation
from .encoder import IGNORE_INDEX, PieceEncoder
from .indexed import AlignedWriter
from .manifest import SFT_FORMAT
from .packing import Packer
from .pipeline import (
    add_common_arguments, check_common_arguments, check_output, common_manifest, encoded_in_workers, open_input,
    run_cli, start_encoding,
)
from .readers import load_record
from .report import report_lines
from .skips import SkipCounter, TrimCounter
from .templates import TemplateError

BATCH = 256          # records per worker task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_autoalign.data.preprocess_sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "conversations", "maximum tokens per training row")
    p.add_argument("--truncation", choices=("drop", "turn"), default="drop",
                   help="over-long conversations: drop them, or keep the longest prefix of whole turns that fits")
    p.add_argument("--strict-roles", action="store_true",
                   help="skip conversations that start with an assistant turn, end with a user turn or have an "
                        "empty turn, instead of trimming them (the default trims, as FastChat does)")
    return check_common_arguments(p, p.parse_args(argv))


# --- worker side (state set in the parent before forking) ---------------------------------------------
_W: dict = {}


def _encode_batch(batch):
    key, template, penc, strict = _W["key"], _W["template"], _W["penc"], _W["strict"]
    seq_len, truncate = _W["seq_len"], _W["truncation"] == "turn"
    ids_out, lab_out, lens, skips, trims, trained = [], [], [], [], [], 0
    for recno, record, reason in batch:
        if reason is None:
            record, reason = load_record(record)  # workers parse the raw JSON text (parallel)
        if reason is None:
            msgs, reason, dropped = conversation(record, key, strict)
        if reason is None:
            try:
                ids, labels, ends = penc(template.render(msgs))
            except TemplateError:
                reason = "template_error"
        if reason is None and len(ids) > seq_len:
            cut = max((e for e in ends if e <= seq_len), default=0) if truncate else 0
            if cut:  # cut only where a whole assistant turn ends; never inside a reply
                ids, labels = ids[:cut], labels[:cut]
            else:
                reason = "too_long"
        if reason is None:
            lab = np.asarray(labels, dtype=np.int32)
            n_tr = int(np.count_nonzero(lab != IGNORE_INDEX))
            if n_tr == 0:
                reason = "no_trained_tokens"
        if reason is not None:
            skips.append((recno, reason))
            continue
        if dropped:
            trims.append((recno, dropped))
        ids_out.append(np.asarray(ids, dtype=np.int32))
        lab_out.append(lab)
        lens.append(len(ids))
        trained += n_tr
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)  # noqa: E731
    return cat(ids_out), cat(lab_out), lens, skips, trims, trained


def _sample_texts(batch, key, limit=64):
    out = []
    for _, raw, reason in batch:
        rec, reason = load_record(raw) if reason is None else (None, reason)
        if reason is None:
            msgs, _, _ = conversation(rec, key)
            out += [t for _, t in msgs or []]
    return out[:limit]


def run(args) -> dict:
    started = time.perf_counter()
    reader, progress = open_input(args, "conversations")
    tok, enc, template, all_batches = start_encoding(args, reader, BATCH, lambda b: _sample_texts(b, args.key))
    _W.update(key=args.key, template=template, penc=PieceEncoder(enc), seq_len=args.seq_len,
              truncation=args.truncation, strict=args.strict_roles)

    stats = {"records": 0, "conversations": 0, "trained": 0}
    skips, trimmed = SkipCounter(), TrimCounter()
    packer = Packer(args.seq_len, args.packing, args.pack_buffer)

    def write_rows(writer, rows):
        for row in rows:
            ids = np.concatenate([r[0] for r in row])
            labs = np.concatenate([r[1] for r in row])
            writer.add_row({"input_ids": ids, "labels": labs}, [len(r[0]) for r in row])

    with encoded_in_workers(_encode_batch, all_batches, args.workers) as results, \
            AlignedWriter(args.output_prefix, ("input_ids", "labels")) as writer:
        for ids, labs, lens, batch_skips, batch_trims, trained in results:
            for recno, reason in batch_skips:
                skips.add(recno, reason)
            for recno, dropped in batch_trims:
                trimmed.add(recno, dropped)
            offsets = np.cumsum([0] + lens)
            for k, n in enumerate(lens):
                item = (ids[offsets[k]:offsets[k + 1]], labs[offsets[k]:offsets[k + 1]])
                write_rows(writer, packer.add(n, item))
            stats["records"] += len(lens) + len(batch_skips)
            stats["conversations"] += len(lens)
            stats["trained"] += trained
            progress.update(len(lens), len(ids))
        write_rows(writer, packer.flush())
        progress.close()
        check_output(args, writer, skips, stats["records"], "trainable conversations")
        manifest = {
            "format": SFT_FORMAT,
            **common_manifest(args, tok, enc, reader, writer, skips, stats["records"],
                              "megatron_autoalign.data.preprocess_sft", trained=stats["trained"],
                              row_capacity=args.seq_len, started=started),
            "num_conversations": stats["conversations"], "trimmed": trimmed.manifest(),
            "strict_roles": args.strict_roles, "truncation": args.truncation,
        }
        writer.commit(manifest)
    return manifest


def main(argv=None) -> int:
    return run_cli(parse_args, run, lambda m: report_lines(m, "num_conversations", "conversations"), argv)


if __name__ == "__main__":
    sys.exit(main())
