"""Preference preprocessing end to end: record formats, masks, bad-input rules, packing, manifest, reader."""
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_autoalign.dpo.dataset import PreferenceDataset
from megatron_autoalign.dpo.pairs import parse_pair
from megatron_autoalign.dpo.preprocess import main
from tests.unit.data_helpers import run_cli, write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def sharegpt(i, history=0, system=None):
    conv = [{"from": "system", "value": system}] if system else []
    for t in range(history):
        conv += [{"from": "human", "value": f"Earlier question {t}?"}, {"from": "gpt", "value": f"Earlier answer {t}."}]
    conv.append({"from": "human", "value": f"What is {i} plus {i}?"})
    return {"conversations": conv, "chosen": {"from": "gpt", "value": f"Sure! {i} plus {i} is {2 * i}."},
            "rejected": {"from": "gpt", "value": f"Go away. It is {2 * i + 1}."}}


def openai(i):
    return {"messages": [{"role": "user", "content": f"Capital number {i}?"}],
            "chosen": {"role": "assistant", "content": "Paris."}, "rejected": [{"role": "assistant", "content": "No idea."}]}


def full_pair(i):
    prompt = [{"role": "user", "content": f"Hi {i}"}, {"role": "assistant", "content": "Hello!"},
              {"role": "user", "content": "Tell me a fact."}]
    return {"chosen": prompt + [{"role": "assistant", "content": "Water boils at 100 C at sea level."}],
            "rejected": prompt + [{"role": "assistant", "content": "Facts are boring."}]}


def run(tmp_path, tok_dir, inp, *extra, seq_len=256, prefix="out/dpo"):
    return run_cli(main, tmp_path, tok_dir, inp, *extra, seq_len=seq_len, prefix=prefix)


def sides(row):
    cut = np.cumsum(row["doc_lens"])[:-1]
    return list(zip(np.split(row["input_ids"], cut), np.split(row["labels"], cut)))


def test_formats_masks_and_reader(tmp_path, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    recs = [sharegpt(0), sharegpt(1, history=2, system="Be kind."), openai(2), full_pair(3)]
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "p.json", recs), "--no-packing")
    assert rc == 0
    ds = PreferenceDataset(prefix)
    m = ds.manifest
    assert m["format"] == "megatron_autoalign.dpo.v1" and m["num_pairs"] == len(ds) == 4 and m["reference"] is None
    replies = [("Sure! 0 plus 0 is 0.", "Go away. It is 1."), ("Sure! 1 plus 1 is 2.", "Go away. It is 3."),
               ("Paris.", "No idea."), ("Water boils at 100 C at sea level.", "Facts are boring.")]
    for i, row in enumerate(ds):
        (ci, cl), (ri, rl) = sides(row)
        assert row["pair_index"] == i and len(row["doc_lens"]) == 2
        # only the final reply + <|im_end|> is trained (earlier assistant turns are context)
        assert tok.decode(ci[cl != -100]) == replies[i][0] + "<|im_end|>"
        assert tok.decode(ri[rl != -100]) == replies[i][1] + "<|im_end|>"
        assert np.array_equal(ci[cl != -100], cl[cl != -100])
        # the prompt tokens are identical on both sides and equal HF's chat-template rendering
        p = int(np.flatnonzero(cl != -100)[0])
        assert np.array_equal(ci[:p], ri[:p]) and int(np.flatnonzero(rl != -100)[0]) == p
        assert tok.decode(ci[:p]).endswith("<|im_start|>assistant\n")
    conv = [{"role": "system", "content": "Be kind."}]
    for t in range(2):
        conv += [{"role": "user", "content": f"Earlier question {t}?"}, {"role": "assistant", "content": f"Earlier answer {t}."}]
    conv += [{"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": replies[1][0]}]
    assert tok.decode(sides(ds[1])[0][0]) == tok.apply_chat_template(conv, tokenize=False)
    assert m["num_trained_tokens"] == sum(int((lab != -100).sum()) for row in ds for _, lab in sides(row))


def test_bad_records_skipped_and_counted(tmp_path, qwen_tokenizer_dir):
    good = [sharegpt(i) for i in range(40)]
    mismatch = full_pair(0)
    mismatch["rejected"][0] = {"role": "user", "content": "a different prompt"}
    same = sharegpt(1)
    same["rejected"] = same["chosen"]
    bad = [mismatch, same, {"conversations": [{"from": "human", "value": "q"}], "chosen": "x"},  # no rejected
           {"conversations": [{"from": "gpt", "value": "a"}], "chosen": "x", "rejected": "y"}]  # prompt ends on gpt
    long = sharegpt(2)
    long["chosen"]["value"] = "word " * 400
    inp = write(tmp_path / "p.jsonl", good + bad + [long, "{not json"], jsonl=True)
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp, "--max-bad-fraction", "0.2")
    assert rc == 0
    m = PreferenceDataset(prefix).manifest
    assert m["skipped"] == {"prompt_mismatch": 1, "identical_replies": 1, "missing_key": 1, "starts_with_assistant": 1,
                            "too_long": 1, "malformed_json": 1}
    assert m["skipped_examples"]["prompt_mismatch"] == [41] and m["num_pairs"] == 40


def test_threshold_is_a_one_line_error_and_writes_nothing(tmp_path, qwen_tokenizer_dir):
    recs = [sharegpt(i) for i in range(5)] + [{"chosen": "a"} for _ in range(5)]
    inp = write(tmp_path / "p.json", recs)
    cmd = [sys.executable, "-m", "megatron_autoalign.dpo.preprocess", "--input", inp, "--output-prefix",
           str(tmp_path / "o/dpo"), "--hf-model-path", qwen_tokenizer_dir, "--seq-len", "128", "--workers", "1",
           "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "record 6: 50% of records lack the conversation key (missing_key: keys chosen×5); " \
        "5 of 10 records are invalid (50.00% > --max-bad-fraction 0.1" in lines[0]
    assert not os.path.exists(tmp_path / "o") or os.listdir(tmp_path / "o") == []


def test_packing_keeps_pairs_together(tmp_path, qwen_tokenizer_dir):
    recs = [sharegpt(i, history=i % 3) for i in range(30)]
    inp = write(tmp_path / "p.json", recs)
    rc, packed = run(tmp_path, qwen_tokenizer_dir, inp, "--packing", seq_len=128, prefix="p/dpo")
    rc2, plain = run(tmp_path, qwen_tokenizer_dir, inp, "--no-packing", seq_len=128, prefix="u/dpo")
    assert rc == rc2 == 0
    P, U = PreferenceDataset(packed), PreferenceDataset(plain)
    assert len(P) < len(U) == 30 and P.manifest["num_pairs"] == 30 and P.manifest["row_capacity"] == 256
    pairs_p = sorted((tuple(c), tuple(r)) for row in P for (c, _), (r, _) in zip(*[iter(sides(row))] * 2))
    pairs_u = sorted((tuple(c), tuple(r)) for row in U for (c, _), (r, _) in [sides(row)])
    assert pairs_p == pairs_u  # every pair intact, in one row, chosen before rejected
    assert all(len(row["input_ids"]) <= 256 for row in P)
    assert sorted(i for row in P for i in range(row["pair_index"], row["pair_index"] + len(row["doc_lens"]) // 2)) \
        == list(range(30))


def test_shell_wrapper_takes_the_sft_positional_arguments(tmp_path, qwen_tokenizer_dir):
    inp = write(tmp_path / "p.json", [sharegpt(i) for i in range(3)])
    script = os.path.join(REPO, "toolkits", "dpo_data_preprocessing", "run_build_idxmap_dpo_dataset.sh")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    proc = subprocess.run(["bash", script, inp, "conversations", "Qwen2Tokenizer", "128", str(tmp_path / "w/dpo"),
                           qwen_tokenizer_dir, "293", "chatml", "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    m = PreferenceDataset(str(tmp_path / "w/dpo")).manifest
    assert m["template"] == "chatml" and m["seq_len"] == 128 and m["tokenizer"]["extra_vocab_size"] == 293


@pytest.mark.parametrize("record,reason", [
    ([1, 2], "not_an_object"),
    ({"chosen": "a"}, "missing_key"),
    ({"conversations": "hi", "chosen": "a", "rejected": "b"}, None),  # a string prompt is one user turn
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "gpt", "value": ""}, "rejected": "b"},
     "empty_text"),
    ({"conversations": [{"from": "human", "value": "q"}], "chosen": {"from": "alien", "value": "a"}, "rejected": "b"},
     "unknown_role"),
    ({"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "b"}]}, "prompt_mismatch"),
])
def test_parse_pair_reasons(record, reason):
    got = parse_pair(record, "conversations")[1]
    assert (got and got.partition(":")[0]) == reason


def test_truncated_input_and_report(tmp_path, qwen_tokenizer_dir, capsys):
    """DPO shares the reader, the threshold and the report with SFT: a cut-off array is kept on request."""
    import json
    text = json.dumps([sharegpt(i) for i in range(6)])
    p = tmp_path / "p.json"
    p.write_text(text[:text.index('{"conversations"', 10 + text.index('"What is 4 plus 4?"')) + 30])
    rc, _ = run(tmp_path, qwen_tokenizer_dir, str(p))
    assert rc == 2 and "the file ends inside record 6" in capsys.readouterr().err
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, str(p), "--keep-truncated")
    m = PreferenceDataset(prefix).manifest
    assert rc == 0 and m["num_pairs"] == 5 and m["skipped"] == {"truncated_record": 1} and m["input_truncated"]
    table = [" ".join(line.split()) for line in capsys.readouterr().err.splitlines()]
    assert "pairs kept 5 83.3%" in table and "truncated_record (policy) 1 first records 6" in table
