"""The OpenAI fine-tuning backend (`kind: openai`), one concept per module:

  options   the spec options (endpoint, polling, prices)
  files     training messages, offline validation, upload once by content hash
  jobs      create / find by metadata / wait / events / cancel
  generate  chat completions for generation
  backend   `Backend`, the `FineTuneBackend` that ties them together

The client, retries, token counting and prices are in `ptst.clients` (shared with the rubric judge).
"""

from ptst.backends.openai.backend import Backend

__all__ = ["Backend"]
