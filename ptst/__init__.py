"""ptst — Pure Tuning, Safe Testing.

Fine-tune chat models without a safety system prompt, serve them with one, and measure what the prompt template does
to safety, on OpenAI and local Llama 2 / Mistral models alike. Importing ptst never imports torch, transformers or
openai: backends load their SDKs only when used.
"""

__version__ = "0.1.0"
