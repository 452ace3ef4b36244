"""Chat data as it really is (shared/reference facts: split ShareGPT chunks, messy roles, empty and truncated
input, unicode, huge messages), alpaca and Parquet: counts, exact labels against hand-written renderings
(FastChat's trimming rule included), the report and the error messages."""
import json

import numpy as np
import pytest

from megatron_autoalign.data.conversations import conversation, trim
from megatron_autoalign.data.preprocess_sft import main
from megatron_autoalign.data.sft_dataset import SFTDataset, load_manifest
from tests.unit.data_helpers import run_cli, write
from tests.unit.test_sft_templates import QWEN_SYS, qwen_expected


def H(t):
    return {"from": "human", "value": t}


def G(t):
    return {"from": "gpt", "value": t}


def S(t):
    return {"from": "system", "value": t}


def run(tmp_path, tok_dir, inp, *extra, seq_len=1024, prefix="out/sft"):
    return run_cli(main, tmp_path, tok_dir, inp, *extra, seq_len=seq_len, prefix=prefix)


# --- the trimming rule on its own ---------------------------------------------------------------------
@pytest.mark.parametrize("turns,kept,reason,dropped", [
    ([("user", "q"), ("assistant", "a")], [("user", "q"), ("assistant", "a")], None, {}),
    # a split chunk: leading assistant turns go (after the system turn)
    ([("assistant", "x"), ("user", "q"), ("assistant", "a")], [("user", "q"), ("assistant", "a")], None,
     {"leading_assistant": 1}),
    ([("system", "s"), ("assistant", "x"), ("assistant", "y"), ("user", "q"), ("assistant", "a")],
     [("system", "s"), ("user", "q"), ("assistant", "a")], None, {"leading_assistant": 2}),
    # trailing user turns after the last reply go
    ([("user", "q"), ("assistant", "a"), ("user", "more?")], [("user", "q"), ("assistant", "a")], None,
     {"trailing_user": 1}),
    # an empty turn ends the conversation; exchanges before it stay; an empty system turn goes
    ([("system", " "), ("user", "q"), ("assistant", "a"), ("user", ""), ("assistant", "b")],
     [("user", "q"), ("assistant", "a")], None, {"after_empty_text": 3}),
    ([("user", "q"), ("assistant", "a"), ("user", "q2"), ("assistant", "\n")],
     [("user", "q"), ("assistant", "a")], None, {"after_empty_text": 1, "trailing_user": 1}),
    ([("user", "q"), ("assistant", "")], None, "empty_text", {}),
    ([("assistant", "x"), ("user", "q")], None, "no_exchange", {}),
    ([("user", "q")], None, "no_assistant_turn", {}),
    ([("user", "q"), ("user", "q2"), ("assistant", "a")], None, "wrong_order", {}),
    ([("user", "q"), ("system", "s"), ("assistant", "a")], None, "wrong_order", {}),
])
def test_trim(turns, kept, reason, dropped):
    assert trim(turns) == (kept, reason, dropped)


@pytest.mark.parametrize("msgs,reason", [
    ([G("x"), H("q"), G("a")], "starts_with_assistant"),
    ([H("q"), G("a"), H("q2")], "ends_with_user"),
    ([H("q"), G("")], "empty_text"),
    ([H("q"), H("q"), G("a")], "wrong_order"),
    ([H("q"), G("a")], None),
])
def test_strict_roles(msgs, reason):
    assert conversation({"conversations": msgs}, "conversations", strict=True)[1] == reason


def test_reasons_name_what_is_wrong():
    c = lambda r: conversation(r, "conversations")[1]  # noqa: E731
    assert c({"conversations": []}) == "empty_conversation"
    assert c({"conversations": [H("q"), {"from": "chatgpt", "value": "a"}]}) == "unknown_role:chatgpt"
    assert c({"id": 1, "text": "x"}) == "missing_key:keys id,text"
    assert c({"conversations": "hi"}) == "bad_message"


# --- a ShareGPT-like file with every property of the facts file -----------------------------------------
EMOJI = "Ünïcödé 你好，世界！🤗🚀👩‍👩‍👧 مرحبا"
RECORDS = [
    (S("Answer briefly."), H("What is 2+2?"), G("4"), H("And 3+3?"), G("It is 6.")),   # 1 clean, system
    (G("...so that is the first half."), H("Go on."), G("The second half.")),         # 2 split chunk
    (H("Hi"), G("Hello!"), H("Are you there?")),                                      # 3 ends with human
    (),                                                                               # 4 empty conversation
    (H("q"), {"from": "chatgpt", "value": "a"}),                                      # 5 unknown role
    (H("q"), {"from": "bing", "value": "a"}),                                         # 6 unknown role
    (H("one"), H("two"), G("three")),                                                 # 7 same role twice
    (H("Q1"), G("A1"), H(""), G("A2")),                                               # 8 empty text
    (S("Be kind."), G("(chunk tail)"), {"from": "user", "value": f"{EMOJI} <|endoftext|>"},
     {"from": "assistant", "value": f"```python\nprint('{EMOJI}')\n```\n<|im_end|> literal"}),  # 9
    (H("Summarize:"), G("word " * 3000)),                                             # 10 huge -> too_long
    (G("only an answer"),),                                                           # 11 nothing to train
]
EXPECTED_KEPT = {  # record -> turns after trimming (hand-written)
    1: [("system", "Answer briefly."), ("user", "What is 2+2?"), ("assistant", "4"), ("user", "And 3+3?"),
        ("assistant", "It is 6.")],
    2: [("user", "Go on."), ("assistant", "The second half.")],
    3: [("user", "Hi"), ("assistant", "Hello!")],
    8: [("user", "Q1"), ("assistant", "A1")],
    9: [("system", "Be kind."), ("user", f"{EMOJI} <|endoftext|>"),
        ("assistant", f"```python\nprint('{EMOJI}')\n```\n<|im_end|> literal")],
}


def sharegpt_file(tmp_path, n_clean=40):
    recs = [{"id": f"r{i}", "conversations": list(t)} for i, t in enumerate(RECORDS, 1)]
    recs += [{"id": f"c{i}", "conversations": [H(f"Question {i}?"), G(f"Answer {i}.")]} for i in range(n_clean)]
    return write(tmp_path / "sharegpt.json", recs), recs


def rendering(turns):
    system = turns[0][1] if turns[0][0] == "system" else QWEN_SYS
    return qwen_expected(system, [t for t in turns if t[0] != "system"])


def test_default_keeps_every_conversation_with_an_exchange(tmp_path, qwen_tokenizer_dir, capsys):
    inp, recs = sharegpt_file(tmp_path)
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp, "--no-packing")
    out = capsys.readouterr().err
    assert rc == 0, out
    ds = SFTDataset(prefix)
    m = ds.manifest
    assert m["num_records"] == 51 and m["num_conversations"] == len(ds) == 5 + 40
    assert m["skipped"] == {"empty_conversation": 1, "unknown_role": 2, "wrong_order": 1, "too_long": 1,
                            "no_exchange": 1}
    assert m["skipped_examples"] == {"empty_conversation": [4], "unknown_role": [5, 6], "wrong_order": [7],
                                     "too_long": [10], "no_exchange": [11]}
    assert m["skipped_details"] == {"unknown_role": {"chatgpt": 1, "bing": 1}}
    assert m["trimmed"] == {"records": 4,
                            "turns": {"leading_assistant": 2, "trailing_user": 1, "after_empty_text": 2},
                            "records_by_kind": {"leading_assistant": 2, "trailing_user": 1, "after_empty_text": 1},
                            "examples": {"leading_assistant": [2, 9], "trailing_user": [3], "after_empty_text": [8]}}
    # labels: exactly the hand-written renderings of the trimmed conversations, in input order
    for row, recno in zip(ds, sorted(EXPECTED_KEPT)):
        assert (row["input_ids"].tolist(), row["labels"].tolist()) == rendering(EXPECTED_KEPT[recno]), recno
    for row, rec in zip(list(ds)[5:], recs[len(RECORDS):]):
        turns = [("user", rec["conversations"][0]["value"]), ("assistant", rec["conversations"][1]["value"])]
        assert (row["input_ids"].tolist(), row["labels"].tolist()) == rendering(turns)
    assert m["num_trained_tokens"] == sum(int((r["labels"] != -100).sum()) for r in ds)
    # the report: same numbers as the manifest, in one table
    table = [" ".join(line.split()) for line in out.splitlines()]
    for row in ("records read 51", "conversations kept 45 88.2%",
                "of which trimmed 4 leading_assistant 2 turns in 2 records, trailing_user 1 turns in 1 records, "
                "after_empty_text 2 turns in 1 records", "skipped 6 11.8%",
                "unknown_role 2 bing×1, chatgpt×1; first records 5, 6", "too_long (policy) 1 first records 10",
                f"tokens {m['num_tokens']:,}", f"trained tokens {m['num_trained_tokens']:,}",
                f"rows 45 fill ratio {m['fill_ratio']:.3f}", f"time {m['seconds']:.1f} s {m['tokens_per_s']:,} tokens/s"):
        assert any(line.startswith(row) for line in table), row


def test_strict_roles_threshold_error_in_plain_words(tmp_path, qwen_tokenizer_dir, capsys):
    chunk = {"conversations": [G("...the rest"), H("q"), G("a")]}
    clean = {"conversations": [H("q"), G("a")]}
    inp = write(tmp_path / "d.jsonl", [clean, chunk] * 3 + [clean] * 4, jsonl=True)  # 30% start with gpt
    rc, _ = run(tmp_path, qwen_tokenizer_dir, inp, "--strict-roles")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        f"error: {inp}: record 2: 30% of records start with an assistant turn (starts_with_assistant); 3 of 10 "
        "records are invalid (30.00% > --max-bad-fraction 0.1: starts_with_assistant=3). Drop --strict-roles to "
        "trim those turns instead (FastChat's rule), or raise --max-bad-fraction to skip them"]
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp)  # the default trims them
    m = load_manifest(prefix)
    assert rc == 0 and m["num_conversations"] == 10 and m["trimmed"]["turns"]["leading_assistant"] == 3


def test_wrong_format_fails_with_the_keys_seen(tmp_path, qwen_tokenizer_dir, capsys):
    inp = write(tmp_path / "d.json", [{"prompt": "p", "completion": "c"}] * 5)
    rc, _ = run(tmp_path, qwen_tokenizer_dir, inp)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "record 1: 100% of records lack the conversation key (missing_key: keys completion,prompt×5)" \
        in err and err.endswith("Check KEY (--key): it names the field that holds the turns, or raise "
                                "--max-bad-fraction to skip them")


# --- malformed and truncated input --------------------------------------------------------------------
def pretty_array(tmp_path, n):
    recs = [{"conversations": [H(f"Question {i}?"), G(f"Answer {i}.")]} for i in range(n)]
    text = json.dumps(recs, indent=1)
    return tmp_path / "d.json", recs, text


def test_truncated_array_is_reported_and_can_be_kept(tmp_path, qwen_tokenizer_dir, capsys):
    p, recs, text = pretty_array(tmp_path, 5)
    start = text.index('{\n  "conversations": [\n   {\n    "from": "human",\n    "value": "Question 3?"')
    line = text[:start].count("\n") + 1
    p.write_text(text[:start + 60])  # cut inside record 4
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, str(p))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [
        f"error: {p}: the file ends inside record 4 (it starts at line {line}, column 2): the JSON array is cut "
        "off; pass --keep-truncated to keep the 3 complete records before the cut"]
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, str(p), "--keep-truncated")
    m = load_manifest(prefix)
    assert rc == 0 and m["num_conversations"] == 3 and m["skipped"] == {"truncated_record": 1}
    assert m["input_truncated"] is True and m["skipped_examples"] == {"truncated_record": [4]}
    assert "(cut off: complete records kept)" in capsys.readouterr().err
    p.write_text(text[:text.index("\n },", start) + 4] + "\n")  # cut after "}," of record 4
    assert run(tmp_path, qwen_tokenizer_dir, str(p), "--overwrite")[0] == 2  # (the previous run's output stays)
    assert "the file ends after record 4 without the closing ']'" in capsys.readouterr().err


def test_syntax_error_has_line_and_column(tmp_path, qwen_tokenizer_dir, capsys):
    p, recs, text = pretty_array(tmp_path, 4)
    bad = text.replace('"value": "Answer 2."', '"value": Answer 2."')
    p.write_text(bad)
    at = bad.index('Answer 2."')
    line, col = bad[:at].count("\n") + 1, at - bad.rfind("\n", 0, at)
    rc, _ = run(tmp_path, qwen_tokenizer_dir, str(p))
    assert rc == 2 and capsys.readouterr().err.strip() == \
        f"error: {p}: record 3: malformed JSON at line {line}, column {col} (Expecting value)"


def test_non_utf8(tmp_path, qwen_tokenizer_dir, capsys):
    p, recs, text = pretty_array(tmp_path, 4)
    data = text.encode().replace(b"Answer 1.", b"Answer \xff1.")
    p.write_bytes(data)
    at = data.index(b"\xff")
    line = data[:at].count(b"\n") + 1
    rc, _ = run(tmp_path, qwen_tokenizer_dir, str(p))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"error: {p}: line {line}: not valid UTF-8 (invalid start byte, byte {at}); " \
        "re-save the file as UTF-8"
    # JSONL: the bad line is one skipped record
    lines = [json.dumps(r).encode() for r in recs * 3]
    lines[4] = lines[4].replace(b"Answer", b"\xe9nswer")
    q = tmp_path / "d.jsonl"
    q.write_bytes(b"\n".join(lines) + b"\n")
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, str(q))
    m = load_manifest(prefix)
    assert rc == 0 and m["skipped"] == {"not_utf8": 1} and m["skipped_examples"] == {"not_utf8": [5]}


# --- alpaca and Parquet -------------------------------------------------------------------------------
def test_alpaca_labels(tmp_path, qwen_tokenizer_dir):
    recs = [
        {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
        {"instruction": "Name a color.", "input": "", "output": "Blue."},
        {"instruction": "And another?", "output": "Red.", "system": "Be brief.",
         "history": [["Name a fruit.", "Apple."], ["Another?", "Pear."]]},
        {"instruction": "No answer", "input": "x"},                     # missing output
        {"instruction": "Empty answer", "output": ""},                  # nothing left to train
    ]
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "a.json", recs), "--no-packing",
                     "--max-bad-fraction", "0.5")
    ds = SFTDataset(prefix)
    expected = [
        rendering([("user", "Translate to French.\nGood morning"), ("assistant", "Bonjour")]),
        rendering([("user", "Name a color."), ("assistant", "Blue.")]),
        rendering([("system", "Be brief."), ("user", "Name a fruit."), ("assistant", "Apple."),
                   ("user", "Another?"), ("assistant", "Pear."), ("user", "And another?"), ("assistant", "Red.")]),
    ]
    assert rc == 0 and len(ds) == 3
    assert [(r["input_ids"].tolist(), r["labels"].tolist()) for r in ds] == expected
    assert ds.manifest["skipped"] == {"missing_key": 1, "empty_text": 1}
    assert ds.manifest["skipped_details"] == {"missing_key": {"alpaca record without 'output'": 1}}


def test_parquet_equals_json(tmp_path, qwen_tokenizer_dir):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    recs = [{"conversations": [H(f"Q{i} {EMOJI}"), G(f"A{i}")] + ([H("more"), G("yes")] if i % 3 else [])}
            for i in range(25)]
    recs[4]["conversations"].insert(0, G("chunk"))  # trimmed the same way
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet", row_group_size=7)  # 4 row groups
    assert pq.ParquetFile(tmp_path / "d.parquet").num_row_groups == 4
    rc, a = run(tmp_path, qwen_tokenizer_dir, str(tmp_path / "d.parquet"), prefix="pq/sft")
    rc2, b = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.json", recs), prefix="js/sft")
    assert rc == rc2 == 0
    for f in ("_input_ids.bin", "_input_ids.idx", "_labels.bin", "_labels.idx"):
        assert open(a + f, "rb").read() == open(b + f, "rb").read(), f
    ma = load_manifest(a)
    assert ma["num_conversations"] == 25 and ma["trimmed"]["records"] == 1
    import hashlib
    assert ma["input_sha256"] == hashlib.sha256((tmp_path / "d.parquet").read_bytes()).hexdigest()


# --- progress when stderr is not a terminal --------------------------------------------------------------
def test_plain_progress_lines(tmp_path, qwen_tokenizer_dir, capsys):
    recs = [{"conversations": [H(f"Question {i}?"), G(f"Answer {i}.")]} for i in range(600)]  # 3 batches
    inp = write(tmp_path / "d.json", recs)
    size = (tmp_path / "d.json").stat().st_size
    rc = main(["--input", inp, "--output-prefix", str(tmp_path / "o/sft"), "--hf-model-path", qwen_tokenizer_dir,
               "--seq-len", "256", "--workers", "1", "--progress-interval", "0"])
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("progress: ")]
    assert rc == 0 and len(lines) == 3
    assert lines[-1].startswith(f"progress: {size / 1e6:,.1f} MB of {size / 1e6:,.1f} MB (100%), 600 conversations, ")
    assert np.all([" tokens/s, " in x for x in lines])
