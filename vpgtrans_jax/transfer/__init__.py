"""VPGTrans transfer pieces: the word converter and the projector merge.

- ``llm_embeddings``: input word embeddings of a Hugging Face LLM directory (OPT, LLaMA family).
- ``alignment``: caption text → (source id, target id) training pairs.
- ``word_converter``: trains, saves and loads the linear map g(x) = W_w x + b_w.
- ``merge``: folds the converter into a source projector and writes a VPG init directory.
"""
