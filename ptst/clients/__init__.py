"""Clients for remote model APIs, shared by the backends that fine-tune on them and the judges that call them.

A judge imports only this package, never `ptst.backends`: judging must not depend on a fine-tuning backend.
Nothing here imports a vendor SDK (openai, tiktoken) at module import time.
"""
