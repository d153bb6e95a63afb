"""The VPGTrans method on top of training: word converter, projector merge, the whole pipeline.

- ``llm_embeddings``: input word embeddings of a Hugging Face LLM directory (any LLM family).
- ``alignment``: caption text → (source id, target id) training pairs.
- ``linear_map``: fitting a linear map between embedding spaces (cosine or MSE, SGD).
- ``word_converter``: trains, saves and loads the word converter g(x) = W_w x + b_w.
- ``merge``: folds the converter into a source projector; writes the target model's stage-1 init.
- ``transfer_config``, ``config_io``: the schema of ``configs/transfer_*.py`` and its overrides.
- ``pipeline``: converter → merge → stage 1 → 2 (→ 3) with evaluations, resumable.
- ``report``: ``report.json`` / ``report.md`` of a transfer.
"""
