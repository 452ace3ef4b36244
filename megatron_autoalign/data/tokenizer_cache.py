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
import json
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


def light_tokenizer(path: str):
    """(tokenizers.Tokenizer, TokenizerInfo) read from the files without transformers (its import, with
    torch's, is most of a first run's start-up), or None where transformers' loading logic could give a
    different tokenizer: an added_tokens.json, or a tokenizer_config.json / special_tokens_map.json that
    adds tokens tokenizer.json lacks. The caller still verifies the fast encoder against this tokenizer."""
    files = {n: os.path.join(path, n) for n in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                               "added_tokens.json")}
    if not os.path.isfile(files["tokenizer.json"]) or os.path.exists(files["added_tokens.json"]):
        return None
    cfg = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map overrides, as in transformers
        if os.path.isfile(files[name]):
            with open(files[name]) as f:
                cfg.update(json.load(f))
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(files["tokenizer.json"])
    added = raw.get_added_tokens_decoder()
    for tid, want in (cfg.get("added_tokens_decoder") or {}).items():
        have = added.get(int(tid))
        if have is None or have.content != want.get("content") or bool(have.special) != bool(want.get("special")):
            return None
    specials = {t.content for t in added.values() if t.special}
    extra = cfg.get("additional_special_tokens") or []
    if not isinstance(extra, list) or any(_content(t) not in specials for t in extra):
        return None

    def token_id(name):
        tok = _content(cfg.get(name))
        return raw.token_to_id(tok) if tok else None

    info = TokenizerInfo(raw.get_vocab_size(with_added_tokens=True), raw.get_vocab_size(with_added_tokens=False),
                         token_id("eos_token"), token_id("pad_token"),
                         cfg.get("tokenizer_class") or "PreTrainedTokenizerFast")
    return raw, info


def _content(token):
    """A special token as tokenizer configs write it: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def agrees_with_tokenizer(path: str, encoder, texts) -> bool:
    """Whether ``encoder`` encodes ``texts`` as the tokenizer in ``path`` does, special-token strings
    taken as plain text (what HF's fast tokenizer does with split_special_tokens=True)."""
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    ref.encode_special_tokens = True
    return all(ref.encode(t, add_special_tokens=False).ids == encoder.encode(t) for t in texts)
