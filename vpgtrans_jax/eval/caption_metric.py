"""Caption metrics with pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), optional SPICE.

Same pipeline as ``COCOEvalCap.evaluate()`` (PTB tokenisation of references and predictions,
then each scorer on the whole set), except that SPICE is only built when asked for:
``COCOEvalCap.evaluate()`` always constructs SPICE, whose constructor downloads Stanford CoreNLP.
Scores are on pycocoevalcap's scale (BLEU/METEOR/ROUGE-L/SPICE in [0, 1], CIDEr up to 10);
papers report them x100. The PTB tokenizer and METEOR run Java.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vpgtrans_jax.errors import MissingDependencyError

CAPTION_METRICS: tuple[str, ...] = (
    "Bleu_1",
    "Bleu_2",
    "Bleu_3",
    "Bleu_4",
    "METEOR",
    "ROUGE_L",
    "CIDEr",
)
# SPICE's Stanford CoreNLP jars, which pycocoevalcap downloads on first use.
SPICE_CORENLP_JARS: tuple[str, ...] = (
    "stanford-corenlp-3.6.0.jar",
    "stanford-corenlp-3.6.0-models.jar",
)
_DOWNLOAD_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class CaptionScores:
    """Corpus scores, per-domain scores (NoCaps) and what happened to SPICE.

    Attributes:
      metrics: ``{"Bleu_1", ..., "CIDEr"[, "SPICE"]}`` on pycocoevalcap's scale, unrounded.
      num_images: images scored.
      spice: "not requested", "computed" or "skipped: <reason>".
      domains: for NoCaps, ``{domain: {"num_images", "CIDEr"[, "SPICE"]}}``; else None.
    """

    metrics: dict[str, float]
    num_images: int
    spice: str
    domains: dict[str, dict[str, float | int]] | None = None


def _require_tools() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            "Caption metrics need pycocoevalcap: `pip install pycocoevalcap` (and Java)."
        ) from e
    if shutil.which("java") is None:
        raise MissingDependencyError(
            "Caption metrics need Java on PATH (pycocoevalcap's PTB tokenizer and METEOR are "
            "Java programs): install a JRE, e.g. `apt-get install openjdk-17-jre-headless`."
        )


def tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """PTB-tokenises (lower-cases, drops punctuation) ``{id: [caption, ...]}`` like COCOEvalCap."""
    _require_tools()
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
    try:
        out = PTBTokenizer().tokenize(wrapped)
    except PermissionError as e:
        raise MissingDependencyError(
            "pycocoevalcap's PTB tokenizer writes a temporary file next to its jar, in a folder "
            f"that is not writable here ({e}); install pycocoevalcap in a writable environment"
        ) from e
    # The tokenizer pairs output lines with ids by position; check that nothing was lost.
    lost = [k for k, v in captions.items() if len(out.get(k, [])) != len(v)]
    if lost:
        raise RuntimeError(
            f"PTB tokenizer returned the wrong number of captions for ids {lost[:5]}"
        )
    return out


def spice_models_dir() -> str:
    """Folder where pycocoevalcap's SPICE expects the Stanford CoreNLP jars."""
    import pycocoevalcap.spice

    return os.path.join(os.path.dirname(os.path.abspath(pycocoevalcap.spice.__file__)), "lib")


def spice_models_present() -> bool:
    """Whether SPICE can run without downloading anything."""
    lib = spice_models_dir()
    return all(os.path.exists(os.path.join(lib, jar)) for jar in SPICE_CORENLP_JARS)


def _fetch_spice_models() -> None:
    from pycocoevalcap.spice.get_stanford_models import get_stanford_models

    # urlretrieve has no timeout of its own; an offline machine must fail, not hang.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
    try:
        get_stanford_models()
    finally:
        socket.setdefaulttimeout(previous)


def _spice(
    gts: dict[str, list[str]], res: dict[str, list[str]], allow_download: bool
) -> tuple[float, dict[str, float]] | str:
    """(corpus SPICE, per-image SPICE F-score), or the reason it was skipped."""
    if not spice_models_present():
        if not allow_download:
            return (
                f"skipped: SPICE needs Stanford CoreNLP 3.6.0 ({', '.join(SPICE_CORENLP_JARS)}) "
                f"in {spice_models_dir()}; allow the download (score.py --spice-download) to let "
                "pycocoevalcap fetch them (about 400 MB), or copy them there"
            )
        try:
            _fetch_spice_models()
        except Exception as e:  # any network / zip error: SPICE is optional
            return f"skipped: fetching SPICE's Stanford CoreNLP models failed ({e!r})"
    from pycocoevalcap.spice.spice import Spice

    try:
        score, per_image = Spice().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError, ValueError) as e:
        return f"skipped: the SPICE jar failed ({e!r}); SPICE 1.0 is known to need Java 8"
    ids = sorted(gts)  # Spice returns per-image scores in sorted id order
    per = {k: float(s["All"]["f"]) for k, s in zip(ids, per_image)}
    return float(score), per


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        return float(meteor.compute_score(gts, res)[0])
    finally:
        # Stop the Java process now; free the lock so Meteor.__del__ cannot block after an error.
        proc = meteor.meteor_p
        if proc.poll() is None:
            proc.stdin.close()
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if meteor.lock.locked():
            meteor.lock.release()


def _cider(gts: dict[str, list[str]], res: dict[str, list[str]], ids: Sequence[str]) -> float:
    from pycocoevalcap.cider.cider import Cider

    score, _ = Cider().compute_score({k: gts[k] for k in ids}, {k: res[k] for k in ids})
    return float(score)


def score_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    domains: Mapping[str, str] | None = None,
    metrics: Sequence[str] = CAPTION_METRICS,
    spice: bool = False,
    spice_download: bool = False,
    log: Callable[[str], Any] = print,
) -> CaptionScores:
    """Scores one predicted caption per image against that image's references.

    Args:
      predictions: ``{image_id: caption}``; every id must have references.
      references: ``{image_id: [caption, ...]}`` (only the predicted ids are used).
      domains: ``{image_id: domain}`` (NoCaps) to add CIDEr per domain, each computed on that
        domain's images alone (its own document frequencies), as for separate domain files.
      metrics: which of ``CAPTION_METRICS`` to compute (default all; a subset can skip METEOR).
      spice: compute SPICE if its CoreNLP models are present, else skip with a message.
      spice_download: let pycocoevalcap download the CoreNLP models if they are missing.
      log: receives progress and skip messages.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.rouge.rouge import Rouge

    unknown = [m for m in metrics if m not in CAPTION_METRICS]
    if unknown:
        raise ValueError(f"metrics {unknown}: expected names from {CAPTION_METRICS}")
    if not predictions:
        raise ValueError("no predictions to score")
    no_refs = [k for k in predictions if not references.get(k)]
    if no_refs:
        raise ValueError(
            f"{len(no_refs)} predicted image id(s) have no reference captions, e.g. {no_refs[:5]}"
        )
    no_domain = [k for k in predictions if domains is not None and k not in domains]
    if no_domain:
        raise ValueError(f"{len(no_domain)} image id(s) have no domain, e.g. {no_domain[:5]}")
    ids = list(predictions)
    log(f"tokenizing {len(ids)} predictions and their references (PTB, Java)")
    gts = tokenize({k: list(references[k]) for k in ids})
    res = tokenize({k: [predictions[k]] for k in ids})

    scores: dict[str, float] = {}
    if any(m.startswith("Bleu_") for m in metrics):
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if "METEOR" in metrics:
        log("computing METEOR (Java)")
        scores["METEOR"] = _meteor(gts, res)
    if "ROUGE_L" in metrics:
        scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        scores["CIDEr"] = _cider(gts, res, ids)
    # Canonical order, and only what was asked for.
    scores = {m: scores[m] for m in CAPTION_METRICS if m in metrics}

    spice_status, spice_per_image = "not requested", None
    if spice:
        log("computing SPICE (Java)")
        result = _spice(gts, res, spice_download)
        if isinstance(result, str):
            spice_status = result
            log(f"SPICE {result}")
        else:
            scores["SPICE"], spice_per_image = result
            spice_status = "computed"

    per_domain = None
    if domains is not None:
        per_domain = {}
        for domain in sorted({domains[k] for k in ids}):
            sub = [k for k in ids if domains[k] == domain]
            entry: dict[str, float | int] = {"num_images": len(sub)}
            if "CIDEr" in metrics:
                entry["CIDEr"] = _cider(gts, res, sub)
            if spice_per_image is not None:
                entry["SPICE"] = float(np.mean([spice_per_image[k] for k in sub]))
            per_domain[domain] = entry
    return CaptionScores(
        metrics=scores, num_images=len(ids), spice=spice_status, domains=per_domain
    )
