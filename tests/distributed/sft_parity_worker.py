"""torchrun worker (1 process): per-token SFT losses of packed rows vs ground truth.

For a few packed rows (several conversations each, micro-batch of 2 rows flattened into one thd
sequence) it computes our model's per-token CE through the SFT task, then
  (a) the HF Qwen2ForCausalLM CE on each conversation run SEPARATELY (independent ground truth), and
  (b) our model on each conversation alone (sbhd, plain causal attention),
and writes the max abs differences over all trained tokens to OUT_JSON.
Usage: torchrun --nproc_per_node 1 sft_parity_worker.py HF_DIR OUT_JSON -- <sft flags>
"""

import json
import sys

import numpy as np
import torch


def main():
    hf_dir, out = sys.argv[1], sys.argv[2]
    argv = sys.argv[sys.argv.index("--") + 1:]
    from transformers import AutoModelForCausalLM

    from megatron_autoalign.training.loop import Trainer, to_device
    from megatron_autoalign.training.sft_batch import IGNORE_INDEX, collate_sbhd, shift_within_docs
    from megatron_autoalign.training.sft_task import SFTTask

    t = Trainer(SFTTask, argv)
    model, task = t.chunks[0], t.task
    model.eval()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    rows = [t.train_ds[i] for i in range(8)]
    rows = [r for r in rows if len(r["doc_lens"]) > 1][:4]
    assert len(rows) >= 2, "synthetic data should pack several conversations per row"

    d_hf = d_alone = 0.0
    compared = 0
    with torch.no_grad():
        for pair in (rows[:2], rows[2:4]):
            batch = task.collate(pair)
            per_token, loss_func = task.forward_step(to_device(batch, t.device), model)
            per_token = per_token.reshape(-1).float().cpu()
            targets = batch["labels"].reshape(-1)
            assert task.layout.cp == 1  # without CP documents are not padded: doc k of row r starts at r*capacity + offset
            for r, row in enumerate(pair):
                offset = 0
                for n in row["doc_lens"].tolist():
                    start = r * task.layout.capacity + offset
                    ids = row["input_ids"][offset : offset + n]
                    tgt = shift_within_docs(row["labels"][offset : offset + n], np.array([n]))
                    offset += n
                    ours = per_token[start : start + n]
                    assert torch.equal(targets[start : start + n], torch.from_numpy(tgt))
                    mask = torch.from_numpy(tgt != IGNORE_INDEX)
                    # (a) HF on this conversation alone
                    logits = hf(torch.from_numpy(ids)[None]).logits[0].float()
                    ref = torch.nn.functional.cross_entropy(
                        logits, torch.from_numpy(tgt).clamp(min=0), reduction="none")
                    d_hf = max(d_hf, (ours - ref)[mask].abs().max().item())
                    # (b) our model on this conversation alone
                    single = collate_sbhd([{"input_ids": ids, "labels": row["labels"][offset - n : offset],
                                            "doc_lens": np.array([n])}], task.layout.capacity, 1, 0, task.layout.pad_id)
                    alone, _ = task.forward_step(to_device(single, t.device), model)
                    alone = alone.reshape(-1)[:n].float().cpu()
                    d_alone = max(d_alone, (ours - alone)[mask].abs().max().item())
                    compared += int(mask.sum())
                # the rest of the row is padding: never trained
                assert (targets[r * task.layout.capacity + offset : (r + 1) * task.layout.capacity] == IGNORE_INDEX).all()
    json.dump({"max_diff_vs_hf": d_hf, "max_diff_packed_vs_alone": d_alone, "tokens": compared}, open(out, "w"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
