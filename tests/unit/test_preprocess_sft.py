"""End to end: input file -> idx/bin + manifest -> SFTDataset, bad records, threshold, packing, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_autoalign.data.preprocess_sft import main
from megatron_autoalign.data.sft_dataset import SFTDataset, load_manifest
from tests.unit.data_helpers import run_cli, write

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def conv(i, turns=1, system=None):
    msgs = [{"from": "system", "value": system}] if system else []
    for t in range(turns):
        msgs += [{"from": "human", "value": f"Question {i}.{t}: what is {i} plus {t}?"},
                 {"from": "gpt", "value": f"{i} plus {t} is {i + t}."}]
    return {"conversations": msgs}


def run(tmp_path, tok_dir, inp, *extra, seq_len=256, prefix="out/sft"):
    return run_cli(main, tmp_path, tok_dir, inp, *extra, seq_len=seq_len, prefix=prefix)


def test_roundtrip_rows_and_labels(tmp_path, qwen_tokenizer_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    recs = [conv(i, turns=1 + i % 3, system="Be exact." if i % 2 else None) for i in range(20)]
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.json", recs), "--no-packing")
    assert rc == 0
    ds = SFTDataset(prefix)
    m = ds.manifest
    assert len(ds) == m["num_rows"] == m["num_conversations"] == 20 and m["packing"] is False
    for i, r in enumerate(ds):
        assert r["input_ids"].dtype == np.int64 and r["doc_lens"].tolist() == [len(r["input_ids"])]
        # independent check: the text decoded from the trained tokens is exactly the replies + <|im_end|>
        trained = r["labels"][r["labels"] != -100]
        assert np.array_equal(trained, r["input_ids"][r["labels"] != -100])
        replies = [t["value"] for t in recs[i]["conversations"] if t["from"] == "gpt"]
        assert tok.decode(trained) == "".join(x + "<|im_end|>" for x in replies)
        assert tok.decode(r["input_ids"]) == tok.apply_chat_template(
            [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]}
             for t in recs[i]["conversations"]], tokenize=False)
    assert m["num_trained_tokens"] == sum(int((r["labels"] != -100).sum()) for r in ds)
    assert m["tokenizer"]["vocab_size"] == 151665 and m["tokenizer"]["eos_id"] == 151645


def test_packing_and_manifest(tmp_path, qwen_tokenizer_dir):
    recs = [conv(i, turns=1 + i % 4) for i in range(60)]
    inp = write(tmp_path / "d.jsonl", recs, jsonl=True)
    rc, packed = run(tmp_path, qwen_tokenizer_dir, inp, "--packing", seq_len=300, prefix="p/sft")
    rc2, plain = run(tmp_path, qwen_tokenizer_dir, inp, "--no-packing", seq_len=300, prefix="u/sft")
    assert rc == rc2 == 0
    P, U = SFTDataset(packed), SFTDataset(plain)
    assert len(P) < len(U) == 60
    assert P.manifest["fill_ratio"] > U.manifest["fill_ratio"]
    # the same multiset of conversations, every row within seq_len, doc boundaries consistent
    conv_p = sorted(tuple(x) for r in P for x in np.split(r["input_ids"], np.cumsum(r["doc_lens"])[:-1]))
    conv_u = sorted(tuple(r["input_ids"]) for r in U)
    assert conv_p == conv_u
    assert all(len(r["input_ids"]) == r["doc_lens"].sum() <= 300 for r in P)
    m = P.manifest
    assert m["format"] == "megatron_autoalign.sft.v1" and m["num_tokens"] == U.manifest["num_tokens"]
    assert m["fill_ratio"] == pytest.approx(m["num_tokens"] / (m["num_rows"] * 300), abs=1e-6)
    import hashlib
    assert m["input_sha256"] == hashlib.sha256(open(inp, "rb").read()).hexdigest()


def test_packing_defaults_on_for_long_rows(tmp_path, qwen_tokenizer_dir):
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.json", [conv(i) for i in range(5)]),
                     seq_len=2048)
    assert rc == 0 and load_manifest(prefix)["packing"] is True and load_manifest(prefix)["num_rows"] == 1


BAD = {
    "malformed_json": '{"conversations": [',
    "not_an_object": [1, 2],
    "missing_key": {"dialogue": []},
    "empty_conversation": {"conversations": []},
    "bad_message": {"conversations": [["human", "hi"], {"from": "gpt", "value": "x"}]},
    "unknown_role": {"conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]},
    "empty_text": {"conversations": [{"from": "human", "value": "  "}, {"from": "gpt", "value": "x"}]},
    "non_string_text": {"conversations": [{"from": "human", "value": 42}, {"from": "gpt", "value": "x"}]},
    "no_assistant_turn": {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "hi"}]},
    "wrong_order": {"conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                      {"from": "gpt", "value": "x"}]},
    "no_exchange": {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "hi"}]},
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_each_bad_record_class_is_skipped_and_counted(tmp_path, qwen_tokenizer_dir, reason):
    recs = [conv(i) for i in range(4)]
    recs.insert(2, json.dumps(BAD[reason]) if reason != "malformed_json" else BAD[reason])  # line 3
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.jsonl", recs, jsonl=True),
                     "--max-bad-fraction", "0.5")
    m = load_manifest(prefix)
    assert rc == 0 and m["skipped"] == {reason: 1} and m["skipped_examples"] == {reason: [3]}
    assert m["num_conversations"] == 4


def test_threshold_fails_before_writing(tmp_path, qwen_tokenizer_dir, capsys):
    recs = [conv(i) for i in range(88)] + [BAD["unknown_role"]] * 8 + [BAD["wrong_order"]] * 4  # 12% bad
    inp = write(tmp_path / "d.json", recs)
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == (
        f"error: {inp}: record 89: 8% of records use a role other than system, human/user, gpt/assistant "
        "(unknown_role: robot×8); 12 of 100 records are invalid (12.00% > --max-bad-fraction 0.1: "
        "unknown_role=8, wrong_order=4). Rename those roles to human/gpt (or user/assistant) in the data, "
        "or raise --max-bad-fraction to skip them")
    assert not os.path.exists(os.path.dirname(prefix)) or os.listdir(os.path.dirname(prefix)) == []
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp, "--max-bad-fraction", "0.12")  # at threshold: ok
    assert rc == 0 and load_manifest(prefix)["skipped"] == {"unknown_role": 8, "wrong_order": 4}


def test_malformed_json_array_is_fatal(tmp_path, qwen_tokenizer_dir, capsys):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([conv(0), conv(1)])[:-1] + ', {"conversations": oops}]')
    rc, _ = run(tmp_path, qwen_tokenizer_dir, str(p))
    assert rc == 2 and "record 3: malformed JSON" in capsys.readouterr().err


def test_json_array_syntax_error_stops_reading(tmp_path):
    """A syntax error early in a large array is reported from the chunk it is in, not after reading the
    whole file; values cut at chunk borders still parse."""
    import hashlib

    from megatron_autoalign.data.conversations import DataError
    from megatron_autoalign.data.readers import InputReader

    records = [conv(i) for i in range(400)]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(records))
    assert [r for _, r, _ in InputReader(str(good), chunk_size=97)] == records
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records[:2])[:-1] + ', {"conversations": oops}, ' + json.dumps(records)[1:])
    reader = InputReader(str(bad), chunk_size=1024)
    with pytest.raises(DataError, match="record 3: malformed JSON"):
        list(reader)
    assert reader.sha256.hexdigest() != hashlib.sha256(bad.read_bytes()).hexdigest()  # stopped early


def test_too_long_drop_and_turn_truncation(tmp_path, qwen_tokenizer_dir):
    long = conv(7, turns=6)
    inp = write(tmp_path / "d.json", [long, conv(1)])
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp, "--no-packing", seq_len=120)
    m = load_manifest(prefix)
    assert rc == 0 and m["skipped"] == {"too_long": 1} and m["num_conversations"] == 1
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp, "--no-packing", "--truncation", "turn", seq_len=120,
                     prefix="t/sft")
    ds = SFTDataset(prefix)
    row = ds[0]
    assert len(ds) == 2 and len(row["input_ids"]) <= 120
    # cut at a turn boundary: the row ends with <|im_end|>\n of an assistant turn, replies complete
    assert row["input_ids"][-2:].tolist() == [151645, 198] and row["labels"][-2:].tolist() == [151645, -100]
    from transformers import AutoTokenizer
    text = AutoTokenizer.from_pretrained(qwen_tokenizer_dir).decode(row["labels"][row["labels"] >= 0])
    assert text.startswith("7 plus 0 is 7.<|im_end|>7 plus 1 is 8.<|im_end|>") and text.endswith(".<|im_end|>")


def test_vocab_check_against_config(tmp_path, qwen_tokenizer_dir, capsys):
    import shutil
    d = tmp_path / "model"
    shutil.copytree(qwen_tokenizer_dir, d)
    inp = write(tmp_path / "d.json", [conv(0)])
    (d / "config.json").write_text(json.dumps({"vocab_size": 151936}))
    assert run(tmp_path, str(d), inp, "--extra-vocab-size", "293")[0] == 0
    assert run(tmp_path, str(d), inp, "--extra-vocab-size", "421", "--overwrite")[0] == 2
    assert "421 + 151643 BPE tokens = 152064 > config vocab_size 151936" in capsys.readouterr().err
    (d / "config.json").write_text(json.dumps({"vocab_size": 151000}))
    assert run(tmp_path, str(d), inp, "--overwrite")[0] == 2
    assert "vocab_size 151000 < tokenizer size 151665" in capsys.readouterr().err


def test_unknown_template_is_one_line_error(tmp_path, qwen_tokenizer_dir, capsys):
    rc, _ = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.json", [conv(0)]), "--template", "alpaca")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "known templates: chatml, llama-3-instruct, qwen, qwen3, hf" in err[0]


def test_reader_errors(tmp_path, qwen_tokenizer_dir):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        SFTDataset(str(tmp_path / "nothing"))
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "d.json", [conv(0)]))
    m = json.load(open(prefix + "_manifest.json"))
    m["format"] = "megatron_autoalign.dpo.v1"
    json.dump(m, open(prefix + "_manifest.json", "w"))
    with pytest.raises(ValueError, match="expected 'megatron_autoalign.sft.v1'"):
        load_manifest(prefix)


def test_workers_and_shell_wrapper_match_in_process(tmp_path, qwen_tokenizer_dir):
    recs = [conv(i, turns=1 + i % 3) for i in range(700)]  # > one worker batch
    inp = write(tmp_path / "d.json", recs)
    rc, ref = run(tmp_path, qwen_tokenizer_dir, inp, "--packing", seq_len=512, prefix="a/sft")
    assert rc == 0
    script = os.path.join(REPO, "toolkits/sft_conv_data_preprocessing/run_build_idxmap_sft_conv_dataset.sh")
    out = str(tmp_path / "b" / "sft")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", script, inp, "conversations", "Qwen2Tokenizer", "512", out, qwen_tokenizer_dir,
                        "293", "qwen", "--packing", "--workers", "2", "--no-progress"],
                       cwd="/", env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for f in ("_input_ids.bin", "_input_ids.idx", "_labels.bin", "_labels.idx"):
        assert open(ref + f, "rb").read() == open(out + f, "rb").read(), f
    assert load_manifest(out)["tokenizer"]["extra_vocab_size"] == 293


def test_index_writer_matches_megatron_builder(tmp_path):
    """Our numpy IndexWriter (no megatron.core import at preprocessing start-up) writes the same bytes as
    megatron.core's IndexedDatasetBuilder, and megatron.core's IndexedDataset reads them back."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

    from megatron_autoalign.data.indexed import IndexWriter

    rng = np.random.default_rng(0)
    docs = [[int(n) for n in rng.integers(1, 50, size=rng.integers(1, 5))] for _ in range(30)]
    ours, ref = IndexWriter(str(tmp_path / "a.bin")), IndexedDatasetBuilder(str(tmp_path / "b.bin"), dtype=np.int32)
    import torch
    for lens in docs:
        toks = rng.integers(0, 151665, size=sum(lens), dtype=np.int32)
        ours.add_document(toks, lens)
        ref.add_document(torch.from_numpy(toks), lens)
    ours.finalize(str(tmp_path / "a.idx"))
    ref.finalize(str(tmp_path / "b.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes(), ext
    ds = IndexedDataset(str(tmp_path / "a"), mmap=True)
    assert ds.sequence_lengths.tolist() == [n for lens in docs for n in lens]
    assert len(ds.document_indices) == len(docs) + 1


def test_runs_import_neither_transformers_nor_torch(tmp_path, qwen_tokenizer_dir):
    """The fast encoder is built from the tokenizer files alone (first run) and then comes from the
    per-tokenizer cache: neither transformers nor torch is imported (their import is most of the start-up),
    and the output is byte-identical to the path through transformers. The key is the tokenizer files' hash."""
    import shutil

    from megatron_autoalign.data import tokenizer_cache

    tok_dir = tmp_path / "tok"
    shutil.copytree(qwen_tokenizer_dir, tok_dir)
    inp = write(tmp_path / "d.json", [conv(i, turns=2) for i in range(6)])
    code = ("import json, sys; from megatron_autoalign.data.preprocess_sft import main; "
            "rc = main(sys.argv[1:]); print(json.dumps([rc, 'transformers' in sys.modules, 'torch' in sys.modules]))")
    env = dict(os.environ, MA_TOKENIZER_CACHE=str(tmp_path / "cache"), PYTHONPATH=REPO)
    outs = []
    for k in range(3):
        out = str(tmp_path / f"o{k}" / "sft")
        r = subprocess.run([sys.executable, "-c", code, "--input", inp, "--output-prefix", out, "--hf-model-path",
                            str(tok_dir), "--seq-len", "256", "--workers", "1", "--no-progress"]
                           + (["--encoder", "hf"] if k == 2 else []),
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append((out, json.loads(r.stdout.strip().splitlines()[-1])))
    assert outs[0][1] == outs[1][1] == [0, False, False] and outs[2][1][:2] == [0, True]
    for f in ("_input_ids.bin", "_input_ids.idx", "_labels.bin", "_labels.idx"):
        assert open(outs[0][0] + f, "rb").read() == open(outs[1][0] + f, "rb").read() \
            == open(outs[2][0] + f, "rb").read(), f
    m0, m1, m2 = (load_manifest(o[0]) for o in outs)
    assert m0["tokenizer"] == m1["tokenizer"] == m2["tokenizer"] and m1["encoder"] == "tiktoken" and m2["encoder"] == "hf"
    key = tokenizer_cache.files_key(str(tok_dir))
    assert os.listdir(tmp_path / "cache") == [key + ".pkl"]
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({**cfg, "model_max_length": 7}))
    assert tokenizer_cache.files_key(str(tok_dir)) != key


def test_cached_encoder_that_disagrees_is_not_used(tmp_path, qwen_tokenizer_dir, monkeypatch):
    """A cache entry whose encoder disagrees with the tokenizer on the data (a corrupted or stale file) is
    ignored: the run builds and verifies a fresh encoder (and rewrites the entry) and writes correct ids."""
    import pickle

    from megatron_autoalign.data import tokenizer_cache
    from transformers import AutoTokenizer

    monkeypatch.setenv("MA_TOKENIZER_CACHE", str(tmp_path / "cache"))
    inp = write(tmp_path / "d.json", [conv(i) for i in range(5)])
    assert run(tmp_path, qwen_tokenizer_dir, inp, prefix="a/sft")[0] == 0
    entry = tmp_path / "cache" / (tokenizer_cache.files_key(qwen_tokenizer_dir) + ".pkl")
    cached = pickle.loads(entry.read_bytes())
    q = AutoTokenizer.from_pretrained(qwen_tokenizer_dir).encode("Question")[0]
    r2i = cached["spec"]["rank_to_id"]
    i, j = r2i.index(q), r2i.index(q + 1)
    r2i[i], r2i[j] = r2i[j], r2i[i]  # "Question" now encodes to a wrong id
    entry.write_bytes(pickle.dumps(cached))
    bad = tokenizer_cache.load(qwen_tokenizer_dir)
    from megatron_autoalign.data.encoder import TiktokenEncoder
    assert TiktokenEncoder.from_spec(bad[1]).encode("Question") == [q + 1]
    assert run(tmp_path, qwen_tokenizer_dir, inp, prefix="b/sft")[0] == 0
    for f in ("_input_ids.bin", "_labels.bin"):
        assert (tmp_path / f"a/sft{f}").read_bytes() == (tmp_path / f"b/sft{f}").read_bytes()
    assert tokenizer_cache.load(qwen_tokenizer_dir)[1]["rank_to_id"][i] == q  # rewritten


def test_tokenizer_read_without_transformers_matches_hf(tmp_path, qwen_tokenizer_dir):
    """light_tokenizer (tokenizers only) gives the same facts and the same fast encoder as transformers'
    AutoTokenizer, also with added special tokens; files it cannot interpret alone send the run to HF."""
    import shutil

    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from megatron_autoalign.data.encoder import TiktokenEncoder
    from megatron_autoalign.data.tokenizer_cache import TokenizerInfo, light_tokenizer

    extended = tmp_path / "extended"
    t = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    t.add_tokens([AddedToken("<|eot_id|>", special=True), AddedToken("<think>", special=False)], special_tokens=True)
    t.save_pretrained(extended)
    for d in (qwen_tokenizer_dir, str(extended)):
        hf = AutoTokenizer.from_pretrained(d)
        raw, info = light_tokenizer(d)
        assert vars(info) == vars(TokenizerInfo.of(hf)) | {"class_name": info.class_name}
        assert info.class_name.replace("Fast", "") == type(hf).__name__.replace("Fast", "")
    # (the plain tokenizer's encoder is compared through whole runs in test_runs_import_neither_...)
    assert TiktokenEncoder(raw).spec == TiktokenEncoder(hf).spec
    assert len(light_tokenizer(str(extended))[1]) == 151667
    odd = tmp_path / "odd"
    shutil.copytree(qwen_tokenizer_dir, odd)
    (odd / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": ["<|not_there|>"]}))
    assert light_tokenizer(str(odd)) is None
    (odd / "special_tokens_map.json").unlink()
    (odd / "added_tokens.json").write_text("{}")
    assert light_tokenizer(str(odd)) is None


def test_output_is_not_overwritten_and_stale_temporaries_go(tmp_path, qwen_tokenizer_dir, capsys):
    inp = write(tmp_path / "d.json", [conv(i) for i in range(4)])
    rc, prefix = run(tmp_path, qwen_tokenizer_dir, inp)
    assert rc == 0
    before = open(prefix + "_manifest.json").read()
    capsys.readouterr()
    # a second run into a complete dataset: refused in one line, nothing touched
    rc, _ = run(tmp_path, qwen_tokenizer_dir, write(tmp_path / "e.json", [conv(i + 9) for i in range(4)]))
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
    assert rc == 2 and len(errors) == 1 and "a complete dataset is already at this prefix; pass --overwrite" in errors[0]
    assert open(prefix + "_manifest.json").read() == before
    # an interrupted run's temporary files (its pid is gone) are removed by the next run; a live one's stay
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [f"{prefix}_input_ids.tmp{dead.stdout.strip()}.bin", f"{prefix}_manifest.json.tmp{dead.stdout.strip()}"]
    live = f"{prefix}_labels.tmp{os.getppid()}.bin"
    for path in stale + [live]:
        open(path, "wb").write(b"x" * 1000)
    rc, _ = run(tmp_path, qwen_tokenizer_dir, inp, "--overwrite")
    assert rc == 0 and "removed 2 temporary files of an interrupted run" in capsys.readouterr().err
    assert not any(os.path.exists(p) for p in stale) and os.path.exists(live)


def test_unwritable_output_folder_is_one_line(tmp_path, qwen_tokenizer_dir, capsys):
    inp = write(tmp_path / "d.json", [conv(0)])
    (tmp_path / "afile").write_text("")
    rc, _ = run(tmp_path, qwen_tokenizer_dir, inp, prefix="afile/sub/sft")  # a folder inside a file
    errors = [l for l in capsys.readouterr().err.splitlines() if l.startswith("error: ")]
    assert rc == 2 and errors == [f"error: {tmp_path}/afile/sub: cannot write the output here (Not a directory); "
                                  "choose another output prefix"]
    if os.geteuid() != 0:  # root writes into read-only folders anyway
        (tmp_path / "ro").mkdir(mode=0o555)
        rc, _ = run(tmp_path, qwen_tokenizer_dir, inp, prefix="ro/sft")
        assert rc == 2 and "ro: cannot write the output here (Permission denied)" in capsys.readouterr().err
