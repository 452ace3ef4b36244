"""Chat conversations (JSON array or JSONL) -> SFT idx/bin + manifest.

    python -m megatron_autoalign.data.preprocess_sft --input data.json --output-prefix out/sft \
        --hf-model-path Qwen2.5-0.5B-Instruct --seq-len 2048 --template qwen

Bad records are skipped and counted by reason; if more than --max-bad-fraction of the records are bad
the run fails before anything is written (one-line error, exit code 2).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from .conversations import InputReader, load_record, parse_conversation
from .encoder import IGNORE_INDEX, PieceEncoder
from .indexed import AlignedWriter
from .manifest import SFT_FORMAT
from .packing import Packer
from .pipeline import (
    add_common_arguments, check_common_arguments, check_output, common_manifest, encoded_in_workers, run_cli,
    start_encoding,
)
from .skips import SkipCounter
from .templates import TemplateError

BATCH = 256          # records per worker task


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m megatron_autoalign.data.preprocess_sft", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(p, "conversations", "maximum tokens per training row")
    p.add_argument("--truncation", choices=("drop", "turn"), default="drop",
                   help="over-long conversations: drop them, or keep the longest prefix of whole turns that fits")
    a = p.parse_args(argv)
    check_common_arguments(p, a)
    return a


# --- worker side (state set in the parent before forking) ---------------------------------------------
_W: dict = {}


def _encode_batch(batch):
    key, template, penc = _W["key"], _W["template"], _W["penc"]
    seq_len, truncate = _W["seq_len"], _W["truncation"] == "turn"
    ids_out, lab_out, lens, skips, trained = [], [], [], [], 0
    for recno, record, reason in batch:
        if reason is None:
            record, reason = load_record(record)  # workers parse the raw JSON text (parallel)
        if reason is None:
            msgs, reason = parse_conversation(record, key)
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
        ids_out.append(np.asarray(ids, dtype=np.int32))
        lab_out.append(lab)
        lens.append(len(ids))
        trained += n_tr
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int32)  # noqa: E731
    return cat(ids_out), cat(lab_out), lens, skips, trained


def _sample_texts(batch, key, limit=64):
    out = []
    for _, raw, reason in batch:
        rec, reason = load_record(raw) if reason is None else (None, reason)
        if reason is None:
            msgs, bad = parse_conversation(rec, key)
            out += [t for _, t in msgs or []]
    return out[:limit]


def run(args) -> dict:
    reader = InputReader(args.input, raw=True)
    tok, enc, template, all_batches = start_encoding(args, reader, BATCH, lambda b: _sample_texts(b, args.key))
    _W.update(key=args.key, template=template, penc=PieceEncoder(enc), seq_len=args.seq_len,
              truncation=args.truncation)

    stats = {"records": 0, "conversations": 0, "trained": 0}
    skips = SkipCounter()
    packer = Packer(args.seq_len, args.packing, args.pack_buffer)
    from tqdm import tqdm
    bar = tqdm(desc="conversations", unit="rec", disable=True if args.no_progress else None, mininterval=1.0)

    def write_rows(writer, rows):
        for row in rows:
            ids = np.concatenate([r[0] for r in row])
            labs = np.concatenate([r[1] for r in row])
            writer.add_row({"input_ids": ids, "labels": labs}, [len(r[0]) for r in row])

    with encoded_in_workers(_encode_batch, all_batches, args.workers) as results, \
            AlignedWriter(args.output_prefix, ("input_ids", "labels")) as writer:
        for ids, labs, lens, batch_skips, trained in results:
            for recno, reason in batch_skips:
                skips.add(recno, reason)
            offsets = np.cumsum([0] + lens)
            for k, n in enumerate(lens):
                item = (ids[offsets[k]:offsets[k + 1]], labs[offsets[k]:offsets[k + 1]])
                write_rows(writer, packer.add(n, item))
            stats["records"] += len(lens) + len(batch_skips)
            stats["conversations"] += len(lens)
            stats["trained"] += trained
            bar.update(len(lens) + len(batch_skips))
        write_rows(writer, packer.flush())
        bar.close()
        check_output(args, writer, skips, stats["records"], "trainable conversations")
        manifest = {
            "format": SFT_FORMAT,
            **common_manifest(args, tok, enc, reader, writer, skips, stats["records"],
                              "megatron_autoalign.data.preprocess_sft"),
            "num_conversations": stats["conversations"], "num_trained_tokens": stats["trained"],
            "fill_ratio": round(writer.num_tokens / (writer.num_rows * args.seq_len), 6),
            "truncation": args.truncation,
        }
        writer.commit(manifest)
    return manifest


def main(argv=None) -> int:
    return run_cli(parse_args, run, lambda m: (
        f"{m['num_rows']} rows, {m['num_conversations']} conversations, {m['num_tokens']} tokens "
        f"({m['num_trained_tokens']} trained), fill {m['fill_ratio']:.3f}"), argv)


if __name__ == "__main__":
    sys.exit(main())
