"""The manifest: a JSON file next to the idx/bin files, written LAST (its presence means "complete")."""
from __future__ import annotations

import json
import os

SFT_FORMAT = "megatron_autoalign.sft.v1"


def manifest_path(prefix: str) -> str:
    return f"{prefix}_manifest.json"


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tokenizer_entry(tok, args) -> dict:
    """The manifest's "tokenizer" entry (same in SFT and DPO manifests): which tokenizer made the ids."""
    return {"name_or_path": args.hf_model_path, "class": args.tokenizer_class,
            "vocab_size": len(tok), "extra_vocab_size": args.extra_vocab_size,
            "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id}


def load_manifest(prefix: str, expected_format: str | None = None) -> dict:
    path = manifest_path(prefix)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no manifest (preprocessing missing or incomplete)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: manifest is not valid JSON ({e.msg})") from None
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if expected_format is not None and fmt != expected_format:
        raise ValueError(f"{path}: format {fmt!r}, expected {expected_format!r}")
    return manifest
