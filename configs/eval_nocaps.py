"""NoCaps validation captioning (VPGTrans protocol: no prompt, beam 5, 8..30 new tokens); CIDEr
is also reported per domain, from the `domain` of the reference json's images.

    python scripts/evaluate.py --config=configs/eval_nocaps.py \
        --config.checkpoint=/path/to/blip2_dir --workdir=/tmp/eval_nocaps \
        --config.data.annotations=nocaps_val.json \
        --config.data.gt=nocaps_val_4500_captions.json \
        --config.data.image_root=/data/nocaps/images
"""

from vpgtrans_jax.eval import protocols


def get_config(arg=None):
    return protocols.caption("nocaps")
