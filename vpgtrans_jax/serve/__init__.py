"""An OpenAI-compatible vision chat server with dynamic batching (``docs/serving.md``).

``engine`` batches concurrent requests into jitted decoding; ``protocol`` parses and checks the
OpenAI chat-completions requests; ``app`` is the FastAPI application; ``bench`` measures it.
"""
