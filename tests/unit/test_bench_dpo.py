"""bench/bench_dpo.py compares ours with TRL on the same pairs: its records go through our DPO preprocessing
whole (no side over the limit) and, rendered the way TRL renders them (the tokenizer's chat template on
prompt + reply), give token-for-token the sequences our preprocessing trains on."""

import json
import os
import sys

BENCH = os.path.join(os.path.dirname(__file__), "..", "..", "bench")
sys.path.insert(0, BENCH)
from bench_dpo import trl_record, write_records  # noqa: E402


def test_records_give_the_same_tokens_as_trl_renders(qwen_tokenizer_dir, tmp_path):
    from transformers import AutoTokenizer

    from megatron_autoalign.dpo import preprocess
    from megatron_autoalign.dpo.synthetic import pairs_in_file_order

    seq_len, n = 384, 6
    records = tmp_path / "pairs.jsonl"
    write_records(str(records), n, seq_len, seed=3)
    assert preprocess.main(["--input", str(records), "--output-prefix", str(tmp_path / "dpo"), "--hf-model-path",
                            qwen_tokenizer_dir, "--seq-len", str(seq_len), "--key", "messages", "--template", "qwen",
                            "--packing", "--workers", "1", "--no-progress"]) == 0
    ours = {tuple(int(t) for t in p[0]): p for p in pairs_in_file_order(str(tmp_path / "dpo"))}
    assert len(ours) == n  # every pair kept: no side longer than seq_len

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)

    def render(messages, **kw):
        return [int(t) for t in tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)["input_ids"]]

    for line in records.read_text().splitlines():
        r = trl_record(json.loads(line))
        chosen, rejected = render(r["prompt"] + r["chosen"]), render(r["prompt"] + r["rejected"])
        prompt = render(r["prompt"], add_generation_prompt=True)
        ids_c, labels_c, ids_r, _ = ours[tuple(chosen)]
        assert [int(t) for t in ids_r] == rejected
        assert chosen[:len(prompt)] == prompt and len(chosen) <= seq_len
        # ours trains the reply and its <|im_end|>; TRL's completion also holds the template's final newline
        assert int((labels_c != -100).sum()) == len(chosen) - len(prompt) - 1
