"""All weight I/O: reading and writing checkpoints, the import engine, format conversions.

- ``safetensors``: the one safetensors reader and writer; ``sources``: tensor sources read shard
  by shard (safetensors / ``.bin`` directories, safe ``.pth`` pickles, in-memory state dicts).
- ``rules``: ``WeightRule`` (our path ← a torch-style name, with the layout change);
  ``hf/``: each tower's Hugging Face config translation and names; ``lavis``: LAVIS names.
- ``engine``: the one import/export engine (``import_tensors``, ``export_tensors``,
  ``relayout``, ``load_state_dict``); ``fill``: flat parameter dicts into (abstract) models.
- ``store``: Orbax parameter groups and write-then-rename outputs; ``model_dir``: this project's
  model directory (a manifest + stored or referenced parts), the one on-disk format for whole
  models and for parts such as a trained VPG.
- ``load``: ``vpgtrans_jax.load``; ``convert``: the conversions behind ``convert/*.py``;
  ``hub``: Hugging Face hub ids resolved through the local HF cache.
"""
