"""Per-tokenizer start-up cache: what preprocessing needs from a tokenizer, kept after the first run.

Building the fast encoder takes loading transformers and the HF tokenizer, then deriving and verifying the
BPE ranks: several seconds, the same every time for the same tokenizer. After the first run that built
and verified it, the encoder's plain-data spec and the few tokenizer facts the manifest and the checks use
(`TokenizerInfo`) are stored under a key that is the SHA-256 of the tokenizer's files, so any change to
those files is a different key. On a hit the HF tokenizer is not loaded at all; the first batch's texts are
still checked against the tokenizer (through the light `tokenizers` library, as HF's fast tokenizer does
it), and any disagreement falls back to the full path.

Location: $MA_TOKENIZER_CACHE, else ~/.cache/megatron_autoalign/tokenizers. Unwritable: silently unused.
"""
from __future__ import annotations

import hashlib
import os
import pickle

CACHE_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")


class TokenizerInfo:
    """The facts about a tokenizer that preprocessing records and checks (duck-types the HF attributes used)."""

    def __init__(self, size: int, vocab_size: int, eos_token_id, pad_token_id, class_name: str):
        self.size, self.vocab_size, self.class_name = size, vocab_size, class_name
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id

    @classmethod
    def of(cls, tok) -> "TokenizerInfo":
        return cls(len(tok), tok.vocab_size, tok.eos_token_id, tok.pad_token_id, type(tok).__name__)

    def __len__(self) -> int:
        return self.size


def cache_dir() -> str:
    return os.environ.get("MA_TOKENIZER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                 "megatron_autoalign", "tokenizers")


def files_key(path: str) -> str | None:
    """SHA-256 over the tokenizer files present in ``path``; None when it has no tokenizer.json."""
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        return None
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for name in TOKENIZER_FILES:
        f = os.path.join(path, name)
        if os.path.isfile(f):
            h.update(name.encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def load(path: str):
    """(TokenizerInfo, encoder spec) stored for this tokenizer, or None."""
    key = files_key(path)
    if key is None:
        return None
    try:
        with open(os.path.join(cache_dir(), key + ".pkl"), "rb") as f:
            entry = pickle.load(f)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError):
        return None
    return entry["info"], entry["spec"]


def store(path: str, info: TokenizerInfo, spec: dict) -> None:
    key = files_key(path)
    if key is None:
        return
    d = cache_dir()
    tmp = os.path.join(d, f"{key}.pkl.tmp{os.getpid()}")
    try:
        os.makedirs(d, exist_ok=True)
        with open(tmp, "wb") as f:
            pickle.dump({"info": info, "spec": spec}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, os.path.join(d, key + ".pkl"))
    except OSError:
        try:
            os.remove(tmp)
        except OSError:
            pass


def agrees_with_tokenizer(path: str, encoder, texts) -> bool:
    """Whether ``encoder`` encodes ``texts`` as the tokenizer in ``path`` does, special-token strings
    taken as plain text (what HF's fast tokenizer does with split_special_tokens=True)."""
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ref.encode_special_tokens = True
    return all(ref.encode(t, add_special_tokens=False).ids == encoder.encode(t) for t in texts)
