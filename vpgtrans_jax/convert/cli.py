"""Command-line front ends of the ``convert/`` scripts (argparse; heavy imports after parsing)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

_DTYPE_HELP = "dtype the parameters are stored in (default: %(default)s)"


def _size(text: str) -> int:
    """'5GB', '500MB', '40KB' or a byte count → bytes."""
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    t = text.strip().upper()
    for u, mult in units.items():
        if t.endswith(u) and t[: -len(u)].strip().replace(".", "", 1).isdigit():
            return int(float(t[: -len(u)]) * mult)
    if t.isdigit():
        return int(t)
    raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 5GB, 500MB, 40KB)")


def _common_out(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out if it exists (only once the new output is complete)",
    )


def _store_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help=_DTYPE_HELP)
    p.add_argument(
        "--scan-layers",
        action="store_true",
        help="store per-layer tensors stacked on a leading layer axis (the layout of "
        "scan_layers=True towers); loading converts either way",
    )
    p.add_argument(
        "--group-size",
        type=_size,
        default="128MB",
        help="write parameters in Orbax groups of about this size; bounds memory "
        "(default: %(default)s)",
    )


def hf_to_orbax_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert/hf_to_orbax.py",
        description="Convert a Hugging Face BLIP-2 directory (Blip2ForConditionalGeneration) or "
        "a HF LLM directory (LlamaForCausalLM incl. Vicuna, OPTForCausalLM; single-file or "
        "sharded safetensors / pytorch_model.bin) into a vpgtrans-jax model directory.",
    )
    p.add_argument("--src", required=True, help="HF model directory (config.json + weights)")
    p.add_argument("--out", required=True, help="model directory to create")
    _store_flags(p)
    _common_out(p)
    return p


def lavis_to_orbax_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert/lavis_to_orbax.py",
        description="Convert a LAVIS BLIP-2 checkpoint ({'model': state_dict} with opt_proj) or a "
        "VPGTrans checkpoint (llama_proj / opt_proj, trainable parts only) into a vpgtrans-jax "
        "model directory. The LLM comes from --llm, the ViT from the checkpoint or --vit. "
        "Pickles are opened with torch.load(weights_only=True) only.",
    )
    p.add_argument("--src", required=True, help="LAVIS / VPGTrans .pth checkpoint")
    p.add_argument(
        "--llm",
        required=True,
        help="HF LLM directory (or a vpgtrans-jax LLM/VL model directory) whose "
        "hidden size matches the checkpoint's projector",
    )
    p.add_argument("--out", required=True, help="model directory to create")
    p.add_argument(
        "--vit",
        default=None,
        help="EVA ViT .pth (LAVIS eva_vit_g.pth) for checkpoints without visual_encoder.* tensors",
    )
    p.add_argument(
        "--vpg-config",
        default=None,
        help="JSON giving the ViT and Q-Former architecture: a HF BLIP-2 config.json, "
        "a vpgtrans_model.json, or {'vision': {...}, 'qformer': {...}} (default: "
        "BLIP-2's EVA ViT-g/14 with 39 blocks and the BERT-base Q-Former)",
    )
    p.add_argument(
        "--ln-vision-eps", type=float, default=1e-5, help="eps of ln_vision (LAVIS: %(default)s)"
    )
    p.add_argument(
        "--reference-llm",
        action="store_true",
        help="record --llm as the LLM's source instead of copying its weights",
    )
    p.add_argument(
        "--allow-unexpected",
        action="append",
        default=[],
        metavar="REGEX",
        help="skip checkpoint tensors whose full name matches REGEX (repeatable); "
        "known-optional ones (Q-Former text path, EVA blocks past the ViT depth, "
        "stage-1 heads, frozen LLM copies) are always skipped and reported",
    )
    _store_flags(p)
    _common_out(p)
    return p


def orbax_to_hf_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert/orbax_to_hf.py",
        description="Write a vpgtrans-jax VL model directory as a Hugging Face BLIP-2 directory "
        "(config.json + safetensors) for Blip2ForConditionalGeneration.from_pretrained. "
        "Referenced towers are read from their sources; scanned layers are unstacked.",
    )
    p.add_argument("--src", required=True, help="vpgtrans-jax model directory")
    p.add_argument("--out", required=True, help="HF directory to create")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="cast tensors to this dtype (default: as stored)",
    )
    p.add_argument(
        "--image-token-index",
        type=int,
        default=None,
        help="id of the image placeholder token (default: the one recorded from the "
        "source HF BLIP-2; required otherwise)",
    )
    p.add_argument(
        "--max-shard-size",
        type=_size,
        default="5GB",
        help="largest safetensors shard (default: %(default)s)",
    )
    _common_out(p)
    return p


def orbax_to_lavis_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert/orbax_to_lavis.py",
        description="Write the trainable parts of a vpgtrans-jax VL model directory (ln_vision, "
        "Q-Former, query tokens, projector) as a LAVIS / VPGTrans checkpoint "
        "({'model': state_dict}) that the original code loads.",
    )
    p.add_argument("--src", required=True, help="vpgtrans-jax model directory")
    p.add_argument("--out", required=True, help=".pth file to create")
    p.add_argument(
        "--proj-name",
        choices=["opt_proj", "llama_proj"],
        default=None,
        help="projector key (default: the one converted from, else by LLM type)",
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default=None,
        help="cast tensors to this dtype (default: as stored)",
    )
    _common_out(p)
    return p


def _run(fn: Callable[[], object]) -> int:
    from vpgtrans_jax.checkpoint_io import CheckpointError

    try:
        fn()
    except (CheckpointError, ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def hf_to_orbax_main(argv: Sequence[str] | None = None) -> int:
    a = hf_to_orbax_parser().parse_args(argv)
    from vpgtrans_jax.convert import tools

    return _run(lambda: tools.hf_to_orbax(
        a.src, a.out, dtype=a.dtype, scan_layers=a.scan_layers, overwrite=a.overwrite,
        group_bytes=a.group_size,
    ))  # fmt: skip


def lavis_to_orbax_main(argv: Sequence[str] | None = None) -> int:
    a = lavis_to_orbax_parser().parse_args(argv)
    from vpgtrans_jax.convert import tools

    return _run(lambda: tools.lavis_to_orbax(
        a.src, a.llm, a.out, vit=a.vit, vpg_config=a.vpg_config, dtype=a.dtype,
        scan_layers=a.scan_layers, ln_vision_eps=a.ln_vision_eps, reference_llm=a.reference_llm,
        allow_unexpected=a.allow_unexpected, overwrite=a.overwrite, group_bytes=a.group_size,
    ))  # fmt: skip


def orbax_to_hf_main(argv: Sequence[str] | None = None) -> int:
    a = orbax_to_hf_parser().parse_args(argv)
    from vpgtrans_jax.convert import tools

    return _run(lambda: tools.orbax_to_hf(
        a.src, a.out, dtype=a.dtype, image_token_index=a.image_token_index,
        max_shard_bytes=a.max_shard_size, overwrite=a.overwrite,
    ))  # fmt: skip


def orbax_to_lavis_main(argv: Sequence[str] | None = None) -> int:
    a = orbax_to_lavis_parser().parse_args(argv)
    from vpgtrans_jax.convert import tools

    return _run(lambda: tools.orbax_to_lavis(
        a.src, a.out, proj_name=a.proj_name, dtype=a.dtype, overwrite=a.overwrite
    ))  # fmt: skip
