"""``--help`` of the training entry points answers from the flag definitions alone: neither torch nor
megatron-core is imported (they take seconds to import), and the task's own flags are listed."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("argv, task_flag", [
    (["-m", "megatron_autoalign.training.sft"], None),
    (["-m", "megatron_autoalign.dpo.train"], "--loss-type {sigmoid,ipo,hinge,rpo,simpo}"),
    (["-m", "megatron_autoalign.training.train", "--task", "dpo"], "--beta BETA"),
])
def test_help_imports_neither_torch_nor_megatron(argv, task_flag):
    r = subprocess.run([sys.executable, "-X", "importtime", *argv, "--help"], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "megatron_autoalign.training.arguments" in imported  # the import log is read correctly
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "megatron", "transformers"))
    assert not heavy, heavy[:10]
    assert "--wandb-project WANDB_PROJECT" in r.stdout and "--micro-batch-size" in r.stdout
    if task_flag:
        assert task_flag in r.stdout


def test_every_flag_has_help_that_shows_its_default():
    import argparse
    from types import SimpleNamespace

    from megatron_autoalign.dpo import flags
    from megatron_autoalign.training.arguments import DefaultsHelpFormatter, build_parser

    parser = build_parser(SimpleNamespace(add_arguments=flags.add_arguments))
    formatter = DefaultsHelpFormatter("prog")
    shown = [a for a in parser._actions if a.help != argparse.SUPPRESS and a.dest != "help"]
    assert len(shown) > 60
    for action in shown:
        assert action.help, action.option_strings
        assert "default" in formatter._get_help_string(action), action.option_strings
