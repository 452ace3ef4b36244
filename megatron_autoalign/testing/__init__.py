"""Offline fixtures for tests and the demo: tiny random Qwen2 models and a real Qwen2.5 tokenizer."""
