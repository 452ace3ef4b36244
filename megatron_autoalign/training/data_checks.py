"""Start-up checks of a preprocessed dataset against this run, shared by every task (one-line errors)."""

from __future__ import annotations

import functools
import os


def check_manifest(manifest: dict, cfg, hf_config: dict) -> None:
    """SEQ_LEN as preprocessed, the tokenizer's size vs the model vocabulary and vs ``--tokenizer``
    (``cfg``: the RunConfig)."""
    where = f"{cfg.data.data_path}_manifest.json"
    seq_length = cfg.data.seq_length or int(manifest["seq_len"])
    if int(manifest["seq_len"]) != seq_length:
        raise ValueError(
            f"{where}: data was preprocessed with seq_len {manifest['seq_len']} but --seq-length is {seq_length}"
        )
    tok = manifest.get("tokenizer") or {}
    vocab = hf_config["vocab_size"]
    if tok.get("vocab_size") and int(tok["vocab_size"]) > vocab:
        raise ValueError(f"{where}: tokenizer has {tok['vocab_size']} tokens but the model vocab is {vocab}")
    tokenizer = cfg.model.tokenizer
    if tokenizer and tok.get("vocab_size"):
        n = _tokenizer_size(tokenizer)
        if n is not None and n != int(tok["vocab_size"]):
            raise ValueError(
                f"{tokenizer}: tokenizer has {n} tokens but the data was tokenized with "
                f"{tok['vocab_size']} ({tok.get('name_or_path')})"
            )


def pad_id(manifest: dict) -> int:
    """The id that fills row padding (its positions are never trained): pad, else eos, else 0."""
    tok = manifest.get("tokenizer") or {}
    pad = tok.get("pad_id")
    return int(pad if pad is not None else tok.get("eos_id") or 0)


@functools.lru_cache(maxsize=4)
def _tokenizer_size(path: str):
    if not os.path.isdir(path):
        raise ValueError(f"{path}: tokenizer directory not found")
    try:
        from transformers import AutoTokenizer

        return len(AutoTokenizer.from_pretrained(path))
    except Exception as e:  # a tokenizer that cannot load is reported, not fatal: the data carries the ids
        print(f"warning: {path}: tokenizer could not be loaded for the vocab check ({type(e).__name__}: {e})", flush=True)
        return None
