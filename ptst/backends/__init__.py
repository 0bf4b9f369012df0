"""Backends: one module per vendor behind the `FineTuneBackend` interface (see `base.py`).

Each module imports its heavy dependencies (openai, torch, transformers, mistral-common) lazily, inside functions,
so importing `ptst` or validating a spec never needs them.
"""
