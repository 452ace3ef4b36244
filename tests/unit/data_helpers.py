"""Helpers shared by the SFT and DPO preprocessing tests."""
import json


def write(path, records, jsonl=False):
    """Write records as a JSON array, or as JSONL (str records are written verbatim, e.g. broken lines)."""
    with open(path, "w") as f:
        if jsonl:
            f.write("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
        else:
            json.dump(records, f)
    return str(path)


def run_cli(main, tmp_path, tok_dir, inp, *extra, seq_len, prefix):
    """Run a preprocessor's main() in-process (1 worker, no progress bar); returns (exit code, output prefix)."""
    prefix = str(tmp_path / prefix)
    rc = main(["--input", inp, "--output-prefix", prefix, "--hf-model-path", tok_dir, "--seq-len", str(seq_len),
               "--workers", "1", "--no-progress", *extra])
    return rc, prefix
