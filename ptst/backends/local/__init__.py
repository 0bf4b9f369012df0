"""The local engine: LoRA fine-tuning with transformers + peft and batched generation, shared by every backend that
runs a model on this machine (`llama2`, `mistral`, and the generic chat-template `hf`).

Subclasses of `LocalBackend` provide the tokenizer side; see `backend.py` for the contract.
"""

from ptst.backends.local.backend import LocalBackend, LocalOptions

__all__ = ["LocalBackend", "LocalOptions"]
