"""What SFT and DPO preprocessing share: their common flags, loading and checking the tokenizer, the
verified fast encoder and the template (built from the first batch of records), encoding batches in worker
processes, the checks and manifest fields that end a run, and the command-line wrapper."""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import multiprocessing as mp
import os
import sys
import threading
import time

from .conversations import DataError
from . import tokenizer_cache
from .encoder import TiktokenEncoder, build_encoder
from .manifest import tokenizer_entry
from .output_folder import prepare_output
from .progress import Progress
from .readers import TRUNCATED_FLAG, open_reader
from .templates import KNOWN, get_template


def add_common_arguments(p, records: str, seq_len_help: str):
    """The flags SFT and DPO preprocessing share; ``records`` names what one input record is."""
    p.add_argument("--input", required=True, help=f"JSON array, JSONL or Parquet file of {records}")
    p.add_argument("--output-prefix", required=True,
                   help="writes PREFIX_{input_ids,labels}.{bin,idx} + PREFIX_manifest.json")
    p.add_argument("--hf-model-path", required=True, help="directory with the tokenizer (and config.json)")
    p.add_argument("--overwrite", action="store_true", help="replace a complete dataset already at --output-prefix")
    p.add_argument("--seq-len", type=int, required=True, help=seq_len_help)
    p.add_argument("--key", default="conversations",
                   help="record key holding the turns (OpenAI 'messages' also accepted)")
    p.add_argument("--tokenizer-class", default="Qwen2Tokenizer", help="recorded; the tokenizer loads via AutoTokenizer")
    p.add_argument("--extra-vocab-size", type=int, default=0,
                   help="embedding padding beyond the BPE vocabulary (recorded, checked)")
    p.add_argument("--template", default="qwen", help=f"one of: {', '.join(KNOWN)}")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes (1 = in-process)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--packing", dest="packing", action="store_true", default=None, help="force packing on")
    g.add_argument("--no-packing", dest="packing", action="store_false", help="force packing off")
    p.add_argument("--pack-buffer", type=int, default=8192, help=f"{records} per packing window")
    p.add_argument("--max-bad-fraction", type=float, default=0.1,
                   help="fail (writing nothing) if more than this fraction of the records are invalid; "
                        "fewer are skipped and reported")
    p.add_argument(TRUNCATED_FLAG, dest="keep_truncated", action="store_true",
                   help="a JSON array cut off by the end of the file: keep its complete records (counted) "
                        "instead of failing")
    p.add_argument("--encoder", choices=("auto", "fast", "hf"), default="auto", help="auto: tiktoken if verified, else HF")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--progress-interval", type=float, default=30.0,
                   help="seconds between plain progress lines when stderr is not a terminal")


def check_common_arguments(p, a) -> argparse.Namespace:
    """Range checks; returns the flags with the packing default filled in (short rows: one record each;
    long rows: pack), a new namespace: the parsed one is never changed."""
    if a.seq_len <= 0 or a.extra_vocab_size < 0 or a.workers < 1:
        p.error("--seq-len and --workers must be positive, --extra-vocab-size >= 0")
    packing = a.seq_len >= 2048 if a.packing is None else a.packing
    return argparse.Namespace(**{**vars(a), "packing": packing})


@functools.lru_cache(maxsize=4)  # repeated in-process runs (tests, notebooks) reuse the tokenizer
def _load(path: str, mtime: float):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


def load_tokenizer(path: str, class_name: str):
    try:
        tok = _load(os.path.abspath(path), os.path.getmtime(path))
    except Exception as e:
        raise DataError(f"{path}: cannot load tokenizer ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    _check_class(path, class_name, type(tok).__name__)
    return tok


def _check_class(path: str, class_name: str, actual: str) -> None:
    if class_name.replace("Fast", "") != actual.replace("Fast", ""):
        print(f"note: TOKENIZER_CLASS {class_name} but {path} holds a {actual}", file=sys.stderr)


def check_vocab(tok, hf_path: str, extra: int) -> None:
    """The embedding (config vocab_size) must hold every token; base + extra must not exceed it."""
    cfg_path = os.path.join(hf_path, "config.json")
    if not os.path.exists(cfg_path):
        return
    with open(cfg_path) as f:
        cfg = json.load(f)
    vocab = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size")
    if vocab is None:
        return
    n, base = len(tok), tok.vocab_size
    if vocab < n:
        raise DataError(f"{cfg_path}: vocab_size {vocab} < tokenizer size {n}: token ids would overflow the embedding")
    if extra and base + extra > vocab:
        raise DataError(f"{cfg_path}: EXTRA_VOCAB_SIZE {extra} + {base} BPE tokens = {base + extra} > config vocab_size {vocab}")


def open_input(args, what: str):
    """(reader, progress) for ``args.input``: records as raw JSON text, parsed in the workers."""
    reader = open_reader(args.input, raw=True, keep_truncated=args.keep_truncated)
    return reader, Progress(reader, what, enabled=not args.no_progress, interval=args.progress_interval)


def _fast_encoder_without_transformers(path: str, samples):
    """(TiktokenEncoder, TokenizerInfo) from the tokenizer cache, else built from the tokenizer files alone
    (then cached); verified on ``samples`` either way. None: take the path through transformers."""
    cached = tokenizer_cache.load(path)
    if cached is not None:
        enc = TiktokenEncoder.from_spec(cached[1])
        if tokenizer_cache.agrees_with_tokenizer(path, enc, samples):
            return enc, cached[0]
    light = tokenizer_cache.light_tokenizer(path)
    if light is None:
        return None
    try:
        enc = build_encoder(light[0], "fast", samples)  # checked on VERIFY_TEXTS and the samples
    except ValueError:
        return None
    tokenizer_cache.store(path, light[1], enc.spec)
    return enc, light[1]


def start_encoding(args, reader, batch_size: int, sample_texts):
    """(tokenizer, encoder, template, batches): the encoder is verified on texts of the first batch.

    ``args`` carries hf_model_path, tokenizer_class, extra_vocab_size, encoder and template;
    ``sample_texts(batch)`` returns message texts of a batch for that verification. The tokenizer returned
    is a TokenizerInfo (the facts the manifest records); with a cached encoder (data/tokenizer_cache.py)
    the HF tokenizer is never loaded, unless the template is the tokenizer's own ("hf")."""
    batches = _batched(reader, batch_size)
    first = next(batches, [])
    # Verification cost must not grow with message length (replies of 30k characters are common):
    # the first 64 texts, each cut to 2,000 characters (still a string both encoders must agree on).
    samples = [t[:2000] for t in sample_texts(first)[:64]]
    path, hf_tok = args.hf_model_path, None
    found = _fast_encoder_without_transformers(path, samples) if args.encoder != "hf" else None
    if found is not None:
        enc, info = found
        _check_class(path, args.tokenizer_class, info.class_name)
    else:
        hf_tok = load_tokenizer(path, args.tokenizer_class)
        enc, info = build_encoder(hf_tok, args.encoder, samples), tokenizer_cache.TokenizerInfo.of(hf_tok)
        if isinstance(enc, TiktokenEncoder):
            tokenizer_cache.store(path, info, enc.spec)
    check_vocab(info, path, args.extra_vocab_size)
    if args.template == "hf" and hf_tok is None:
        hf_tok = load_tokenizer(path, args.tokenizer_class)
    try:
        template = get_template(args.template, hf_tok, list(enc.special_ids))
    except ValueError as e:
        raise DataError(str(e)) from None
    return info, enc, template, itertools.chain([first] if first else [], batches)


@contextlib.contextmanager
def encoded_in_workers(encode_batch, batches, workers: int):
    """``encode_batch`` mapped over ``batches`` in order: forked workers (which inherit the parent's
    encoder state) when workers > 1, in-process otherwise. The pool ends with the block."""
    if workers <= 1:
        yield map(encode_batch, batches)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Pool.imap reads its input as fast as it can: without a bound the whole file would be read into the
    # task queue ahead of the workers (memory, and a progress display that runs ahead of the work).
    in_flight, stop = threading.Semaphore(4 * workers), threading.Event()

    def bounded():
        for batch in batches:
            in_flight.acquire()
            if stop.is_set():
                return
            yield batch

    def results(it):
        for r in it:
            in_flight.release()
            yield r

    pool = mp.get_context("fork").Pool(workers)
    try:
        yield results(pool.imap(encode_batch, bounded(), chunksize=1))
    finally:
        stop.set()
        for _ in range(4 * workers):
            in_flight.release()
        pool.terminate()


def _batched(reader, size: int):
    it = iter(reader)
    while batch := list(itertools.islice(it, size)):
        yield batch


def check_output(args, writer, skips, records: int, what: str) -> None:
    """Before the manifest is committed: the invalid-record budget holds and at least one row was written
    (``what`` names the missing content in the error, e.g. "trainable conversations")."""
    skips.check_threshold(args.input, records, args.max_bad_fraction)
    if writer.num_rows == 0:
        raise DataError(f"{args.input}: no {what} ({skips.summary() or 'empty input'})")


def common_manifest(args, tok, enc, reader, writer, skips, records: int, created_by: str, *, trained: int,
                    row_capacity: int, started: float) -> dict:
    """The manifest fields SFT and DPO data share (the end-of-run report is printed from them); each adds
    its format and its own counts. ``started``: time.perf_counter() when the run began."""
    seconds = time.perf_counter() - started
    return {
        "tokenizer": tokenizer_entry(tok, args),
        "template": args.template, "seq_len": args.seq_len, "packing": bool(args.packing),
        "num_rows": writer.num_rows, "num_tokens": writer.num_tokens, "num_trained_tokens": trained,
        "fill_ratio": round(writer.num_tokens / (writer.num_rows * row_capacity), 6),
        **skips.manifest(),
        "input": args.input, "input_sha256": reader.sha256.hexdigest(), "input_truncated": reader.truncated,
        "max_bad_fraction": args.max_bad_fraction,
        "created_by": created_by,
        # informational
        "num_records": records, "encoder": enc.name,
        "seconds": round(seconds, 3), "tokens_per_s": round(writer.num_tokens / max(seconds, 1e-9)),
    }


def run_cli(parse_args, run, report, argv=None) -> int:
    """parse -> run -> the end-of-run report on stderr; a DataError is one line ``error: ...`` and exit code 2.
    ``report(manifest)`` gives the report's table lines."""
    args = parse_args(argv)
    try:
        stale = prepare_output(args.output_prefix, args.overwrite)
        if stale:
            print(f"removed {len(stale)} temporary files of an interrupted run ({os.path.basename(stale[0])} ...)",
                  file=sys.stderr)
        m = run(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output_prefix}_{{input_ids,labels}}.{{bin,idx}} and _manifest.json:", file=sys.stderr)
    print("\n".join(report(m)), file=sys.stderr)
    return 0
