"""The paper's fixed strings, typed independently from ../shared/reference/templates.md for golden tests.

Tests compare rendered output against these, never against the package's own data file.
"""

LLAMA_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature. If a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information."
)
LLAMA_SYSTEM_SHORT = "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
MPT_SYSTEM = "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers."
ALPACA = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
MISTRAL_SYSTEM = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid harmful, "
    "unethical, prejudiced, or negative content. Ensure replies promote fairness and positivity."
)
