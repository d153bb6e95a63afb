"""Outputs never destroy what is not ours (issue 18, items 1, 3 and 4).

A directory output replaces an existing one only with ``--overwrite`` and only when it is an
earlier output of this project's tools (``vpgtrans_jax.outputs.MARKER``) holding nothing else; no
output may be, hold or lie inside one of the command's inputs.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch

from tests import torch_reference as F
from tests.scripts_util import run_script
from vpgtrans_jax.checkpoint import convert as tools
from vpgtrans_jax.checkpoint import model_dir
from vpgtrans_jax.data.arrayrecord import ArrayRecordSource, convert_source, write_shards
from vpgtrans_jax.eval import protocols
from vpgtrans_jax.eval.runner import evaluate
from vpgtrans_jax.outputs import MARKER, OutputError, atomic_output, read_marker
from vpgtrans_jax.transfer.merge import merge_projector
from vpgtrans_jax.transfer.word_converter import WordConverter, build_word_converter

from .test_convert_lavis import to_lavis


def quiet(msg: str) -> None:
    pass


def digest(path) -> str:
    """One hash of a file or of a directory tree (names and contents)."""
    h = hashlib.sha256()
    path = str(path)
    if os.path.isfile(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()
    for d, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(d, f), path).encode())
            h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()


def user_dir(path) -> str:
    """A directory of the user's own files."""
    os.makedirs(path / "sub")
    (path / "notes.txt").write_text("my notes")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return digest(path)


def one_error_line(done) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny OPT BLIP-2 as HF dir, HF LLM dir, LAVIS .pth and our model directory; a converter
    from the BLIP-2's LLM to itself and the merge of the two (referencing the LLM directory)."""
    root = tmp_path_factory.mktemp("world")
    model = F.tiny_blip2("opt", seed=5)
    model.save_pretrained(root / "hf")
    model.language_model.save_pretrained(root / "opt")
    torch.save({"model": to_lavis(model, "opt_proj")}, root / "blip2.pth")
    tools.hf_to_orbax(str(root / "hf"), str(root / "md"), log=quiet)
    width = model.config.text_config.hidden_size
    rng = np.random.default_rng(0)
    conv = WordConverter(
        rng.standard_normal((width, width)).astype(np.float32),
        np.zeros(width, np.float32),
        {"tgt_llm": str(root / "opt")},
    )
    conv.save(str(root / "conv"))
    merge_projector(str(root / "md"), str(root / "conv"), str(root / "init"), log=None)
    return root


# ---- item 1: --out onto a directory that is not ours -------------------------------------------


def test_atomic_output_replaces_only_its_own_outputs(tmp_path):
    def write(out, text, **kw):
        with atomic_output(str(out), kind="test output", **kw) as tmp:
            with open(os.path.join(tmp, "a.txt"), "w") as f:
                f.write(text)

    mine = tmp_path / "mine"
    before = user_dir(mine)
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        write(mine, "1")
    with pytest.raises(FileExistsError, match=rf"--overwrite refused: .* no {MARKER}.*notes.txt"):
        write(mine, "1", overwrite=True)
    assert digest(mine) == before
    # An empty directory is simply filled; the output carries the marker with its entries.
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty", "1")
    marker = read_marker(str(tmp_path / "empty"))
    assert marker["kind"] == "test output" and marker["entries"] == sorted(["a.txt", MARKER])
    # Our own earlier output: refused without --overwrite, replaced whole with it.
    with pytest.raises(FileExistsError, match="--overwrite"):
        write(tmp_path / "empty", "2")
    write(tmp_path / "empty", "2", overwrite=True)
    assert (tmp_path / "empty" / "a.txt").read_text() == "2"
    # A file the user put into our output makes it foreign: refused, nothing changed.
    (tmp_path / "empty" / "added.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds added.txt, which its earlier test output"):
        write(tmp_path / "empty", "3", overwrite=True)
    assert (tmp_path / "empty" / "added.txt").read_text() == "mine"
    # A file where a directory goes, and a directory where a file goes, are never replaced.
    (tmp_path / "f").write_text("keep")
    with pytest.raises(FileExistsError, match="is a file"):
        write(tmp_path / "f", "1", overwrite=True)
    with pytest.raises(FileExistsError, match="is a directory"):
        with atomic_output(str(mine), overwrite=True, is_dir=False):
            pass
    assert (tmp_path / "f").read_text() == "keep" and digest(mine) == before
    # Outputs from before the marker are recognised by the writer (``also_ours``) only.
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.txt").write_text("0")
    write(old, "1", overwrite=True, also_ours=lambda p: os.listdir(p) == ["a.txt"])
    assert (old / "a.txt").read_text() == "1"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporaries left


def test_merge_projector_cli_keeps_a_users_directory(world, tmp_path):
    """The original failure: ``merge_projector.py --out DIR`` deleted DIR and everything in it."""
    out = tmp_path / "work"
    before = user_dir(out)
    args = ["--src_checkpoint", str(world / "md"), "--converter", str(world / "conv")]
    line = one_error_line(
        run_script("scripts/merge_projector.py", *args, "--out", str(out), "--overwrite")
    )
    assert "--overwrite refused" in line and "notes.txt" in line
    assert digest(out) == before
    # Without --overwrite the library refuses it too; our own earlier output is replaced.
    with pytest.raises(FileExistsError, match="not empty"):
        merge_projector(str(world / "md"), str(world / "conv"), str(out), log=None)
    ours = str(world / "init")  # our own earlier output
    merge_projector(str(world / "md"), str(world / "conv"), ours, overwrite=True, log=None)
    assert model_dir.read_manifest(ours)["info"]["stage"] == "merge"
    assert read_marker(ours)["created_by"] == "vpgtrans_jax.transfer.merge"
    assert digest(out) == before


def test_model_directories_from_before_the_marker_are_still_replaced(world, tmp_path):
    """A model directory written before outputs carried the marker (a training run's export
    being rewritten) holds only its manifest and params, and is replaced with --overwrite."""
    out = tmp_path / "old"
    tools.hf_to_orbax(str(world / "opt"), str(out), log=quiet)
    os.remove(out / MARKER)
    tools.hf_to_orbax(str(world / "opt"), str(out), dtype="bfloat16", overwrite=True, log=quiet)
    assert model_dir.read_manifest(str(out))["parts"]["llm"]["dtype"] == "bfloat16"
    (out / "notes.txt").write_text("mine")
    os.remove(out / MARKER)
    with pytest.raises(FileExistsError, match="not an output of this project"):
        tools.hf_to_orbax(str(world / "opt"), str(out), overwrite=True, log=quiet)
    assert (out / "notes.txt").read_text() == "mine"


def test_word_converter_replaces_only_a_converter(world, tmp_path):
    conv = WordConverter(np.eye(4, dtype=np.float32), np.zeros(4, np.float32), {})
    mine = tmp_path / "mine"
    before = user_dir(mine)
    with pytest.raises(FileExistsError, match="--overwrite refused"):
        conv.save(str(mine), overwrite=True)
    assert digest(mine) == before
    conv.save(str(tmp_path / "c"))
    conv.save(str(tmp_path / "c"), overwrite=True)
    assert read_marker(str(tmp_path / "c"))["kind"] == "word converter"


# ---- item 3: --out equal to, inside or holding --src --------------------------------------------


def test_converters_refuse_an_output_on_their_source(world, tmp_path):
    """The original failure: ``--out`` = ``--src`` with ``--overwrite`` destroyed the source."""
    root = world
    before = {name: digest(root / name) for name in ("hf", "opt", "md", "blip2.pth", "conv")}
    cases = [
        ("is the input --src", lambda: tools.hf_to_orbax(str(root / "hf"), str(root / "hf"),
                                                         overwrite=True, log=quiet)),
        ("is inside the input --src", lambda: tools.hf_to_orbax(
            str(root / "hf"), str(root / "hf" / "orbax"), overwrite=True, log=quiet)),
        ("would replace the directory holding the input --src", lambda: tools.hf_to_orbax(
            str(root / "hf"), str(root), overwrite=True, log=quiet)),
        ("is the input --src", lambda: tools.orbax_to_hf(str(root / "md"), str(root / "md"),
                                                         overwrite=True, log=quiet)),
        ("is inside the input --src", lambda: tools.orbax_to_lavis(
            str(root / "md"), str(root / "md" / "vpg.pth"), overwrite=True, log=quiet)),
        ("is the input --src", lambda: tools.orbax_to_lavis(str(root / "md"), str(root / "md"),
                                                            overwrite=True, log=quiet)),
        ("is the input --llm", lambda: tools.lavis_to_orbax(
            str(root / "blip2.pth"), str(root / "opt"), str(root / "opt"), overwrite=True,
            vpg_config=str(root / "hf" / "config.json"), log=quiet)),
        ("is the input --src", lambda: tools.lavis_to_orbax(
            str(root / "blip2.pth"), str(root / "opt"), str(root / "blip2.pth"), overwrite=True,
            log=quiet)),
        ("is the input --src_checkpoint", lambda: merge_projector(
            str(root / "md"), str(root / "conv"), str(root / "md"), overwrite=True, log=None)),
        ("is the input --converter", lambda: merge_projector(
            str(root / "md"), str(root / "conv"), str(root / "conv"), overwrite=True, log=None)),
        ("is the input --tgt_llm", lambda: merge_projector(
            str(root / "md"), str(root / "conv"), str(root / "opt"), overwrite=True, log=None)),
        ("is the input --src_llm", lambda: build_word_converter(
            str(root / "opt"), str(root / "hf"), [str(root / "blip2.pth")], str(root / "opt"),
            overwrite=True, log=None)),
    ]  # fmt: skip
    for message, call in cases:
        with pytest.raises(OutputError, match=message):
            call()
    # A symlink does not hide the source; nor does a path with "..".
    os.symlink(root / "md", tmp_path / "link")
    with pytest.raises(OutputError, match="is the input --src"):
        tools.orbax_to_hf(str(root / "md"), str(tmp_path / "link"), overwrite=True, log=quiet)
    with pytest.raises(OutputError, match="is the input --src"):
        tools.hf_to_orbax(str(root / "hf"), str(root / "md" / ".." / "hf"), overwrite=True)
    assert {name: digest(root / name) for name in before} == before


def test_a_model_directorys_referenced_sources_are_inputs_too(world, tmp_path):
    """Converting a model directory reads the directories its parts reference."""
    init = str(world / "init")  # references the LLM directory "opt"
    before = digest(world / "opt")
    with pytest.raises(OutputError, match="--src's llm source"):
        tools.orbax_to_hf(init, str(world / "opt"), overwrite=True, log=quiet)
    assert digest(world / "opt") == before


def test_single_file_output_needs_overwrite(world, tmp_path):
    out = tmp_path / "vpg.pth"
    out.write_bytes(b"someone's file")
    with pytest.raises(FileExistsError, match="--overwrite"):
        tools.orbax_to_lavis(str(world / "md"), str(out), log=quiet)
    assert out.read_bytes() == b"someone's file"
    tools.orbax_to_lavis(str(world / "md"), str(out), overwrite=True, log=quiet)
    assert "model" in torch.load(out, weights_only=True)


# ---- item 4: an output that is one of the inputs, in every tool ----------------------------------


def test_score_refuses_out_equal_to_an_input(tmp_path):
    """The original failure: ``score.py --predictions P --out P`` replaced the predictions."""
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps([{"question_id": 1, "answer": "red"}]))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": []}))
    before = {p: p.read_bytes() for p in (pred, ann)}
    args = ["--task", "vqav2", "--predictions", str(pred), "--annotations", str(ann)]
    line = one_error_line(run_script("scripts/score.py", *args, "--out", str(pred)))
    assert "is the input --predictions" in line
    os.symlink(ann, tmp_path / "link.json")
    link = str(tmp_path / "link.json")
    line = one_error_line(run_script("scripts/score.py", *args, "--out", link))
    assert "is the input --annotations" in line
    line = one_error_line(run_script("scripts/score.py", *args, "--out", str(tmp_path)))
    assert "would replace the directory holding the input --predictions" in line
    assert {p: p.read_bytes() for p in before} == before


def test_evaluate_refuses_writing_over_its_annotations(tmp_path):
    cfg = protocols.vqa("vqav2")
    ann = tmp_path / "predictions_vqav2.json"
    ann.write_text('{"questions": []}')
    cfg.data.annotations, cfg.data.image_root = str(ann), str(tmp_path)
    with pytest.raises(OutputError, match="is the input --config.data.annotations"):
        evaluate(cfg, str(tmp_path))
    assert ann.read_text() == '{"questions": []}'


def test_prepare_data_refuses_writing_over_its_input_shards(tmp_path):
    records = [{"key": str(i), "image": b"\xff\xd8", "text": f"caption {i}"} for i in range(3)]
    prefix = str(tmp_path / "train")
    paths = write_shards(records, prefix, records_per_shard=2)
    before = {p: digest(p) for p in paths}
    with pytest.raises(OutputError, match="would write over the input --shards"):
        convert_source(ArrayRecordSource(paths), prefix, records_per_shard=2,
                       inputs={"--shards": prefix + "-*"})  # fmt: skip
    assert {p: digest(p) for p in paths} == before
    # Another prefix in the same directory is fine.
    out = convert_source(
        ArrayRecordSource(paths), str(tmp_path / "copy"), inputs={"--shards": paths}
    )
    assert len(ArrayRecordSource(out)) == 3
