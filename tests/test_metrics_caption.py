"""Caption metrics (pycocoevalcap, Java) on small hand cases with known values."""

import json

import pytest

from vpgtrans_jax.eval import caption_metric, formats
from vpgtrans_jax.eval.caption_metric import score_captions
from vpgtrans_jax.eval.scoring import score_files

# Four images whose captions share no word, so every n-gram occurs in one image only.
REFERENCES = {
    "1": "A dog runs on green grass.",
    "2": "Two cats sleep inside houses!",
    "3": "red car parked near trees",
    "4": "old man reading newspaper today",
}
DOMAINS = {"1": "in-domain", "2": "in-domain", "3": "out-domain", "4": "out-domain"}


def _quiet(_msg):
    pass


def _write_nocaps(tmp_path, predictions):
    ann = {
        "images": [{"id": int(k), "domain": d} for k, d in DOMAINS.items()],
        "annotations": [
            {"image_id": int(k), "caption": c, "id": i}
            for i, (k, c) in enumerate(REFERENCES.items())
        ],
    }
    preds = [{"image_id": int(k), "caption": c} for k, c in predictions.items()]
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    return tmp_path / "pred.json", tmp_path / "ann.json"


@pytest.fixture(scope="module")
def identical_nocaps(tmp_path_factory):
    """All metrics on predictions equal to the references up to case and punctuation."""
    predictions = {k: c.lower().rstrip(".!") for k, c in REFERENCES.items()}
    pred, ann = _write_nocaps(tmp_path_factory.mktemp("nocaps"), predictions)
    mp = pytest.MonkeyPatch()
    # Whatever is installed here, SPICE must take its "models missing" path, never download.
    mp.setattr(caption_metric, "spice_models_present", lambda: False)
    try:
        yield score_files("nocaps", pred, ann, spice=True, log=_quiet)
    finally:
        mp.undo()


def test_identical_captions_score_perfectly(identical_nocaps):
    m = identical_nocaps["metrics"]
    assert list(m) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"]
    for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L"):
        assert m[name] == pytest.approx(1.0, abs=1e-6), name
    # CIDEr-D: cosine 1 for n = 1..4, no length penalty, times 10.
    assert m["CIDEr"] == pytest.approx(10.0, abs=1e-9)
    assert identical_nocaps["num_images"] == 4


def test_nocaps_domains_and_spice_skip(identical_nocaps):
    assert identical_nocaps["domains"] == {
        "in-domain": {"num_images": 2, "CIDEr": pytest.approx(10.0)},
        "out-domain": {"num_images": 2, "CIDEr": pytest.approx(10.0)},
    }
    assert "SPICE" not in identical_nocaps["metrics"]
    assert identical_nocaps["spice"].startswith("skipped: SPICE needs Stanford CoreNLP")
    assert "--spice-download" in identical_nocaps["spice"]


def test_bleu_and_rouge_known_values():
    # Tokenised: "a cat sat on the mat" vs "a cat sat on a mat" (lower-cased, "." dropped).
    scores = score_captions(
        {"7": "A cat sat on the mat."},
        {"7": ["a cat sat on a mat"]},
        metrics=("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L"),
        log=_quiet,
    )
    p1, p2, p3, p4 = 5 / 6, 3 / 5, 2 / 4, 1 / 3  # clipped n-gram precisions, brevity penalty 1
    assert scores.metrics == pytest.approx(
        {
            "Bleu_1": p1,
            "Bleu_2": (p1 * p2) ** (1 / 2),
            "Bleu_3": (p1 * p2 * p3) ** (1 / 3),
            "Bleu_4": (p1 * p2 * p3 * p4) ** (1 / 4),
            "ROUGE_L": 5 / 6,  # LCS 5 of 6 words both ways -> F = 5/6 for any beta
        },
        abs=1e-7,
    )
    assert scores.spice == "not requested" and scores.domains is None


def test_cider_per_domain_is_computed_on_each_domain_alone():
    predictions = {k: c for k, c in REFERENCES.items()}
    predictions["4"] = "blue bird flying high"  # no word in any reference -> 0
    scores = score_captions(
        predictions,
        {k: [c] for k, c in REFERENCES.items()},
        domains=DOMAINS,
        metrics=("CIDEr",),
        log=_quiet,
    )
    assert scores.metrics == {"CIDEr": pytest.approx(7.5)}  # (10 + 10 + 10 + 0) / 4
    assert scores.domains == {
        "in-domain": {"num_images": 2, "CIDEr": pytest.approx(10.0)},
        "out-domain": {"num_images": 2, "CIDEr": pytest.approx(5.0)},
    }


def test_spice_download_failure_is_a_skip(monkeypatch):
    monkeypatch.setattr(caption_metric, "spice_models_present", lambda: False)

    def offline():
        raise OSError("no network")

    monkeypatch.setattr(caption_metric, "_fetch_spice_models", offline)
    result = caption_metric._spice({"1": ["a b"]}, {"1": ["a b"]}, allow_download=True)
    assert result.startswith("skipped: fetching SPICE's Stanford CoreNLP models failed")


def test_missing_java_is_explained(monkeypatch):
    monkeypatch.setattr(caption_metric.shutil, "which", lambda _: None)
    with pytest.raises(RuntimeError, match="need Java on PATH"):
        caption_metric.tokenize({"1": ["a dog"]})


def test_score_captions_rejects_bad_arguments():
    with pytest.raises(ValueError, match="metrics \\['BLEU'\\]"):
        score_captions({"1": "a"}, {"1": ["a"]}, metrics=("BLEU",), log=_quiet)
    with pytest.raises(ValueError, match="have no reference captions"):
        score_captions({"1": "a"}, {"2": ["a"]}, log=_quiet)
    with pytest.raises(ValueError, match="have no domain"):
        score_captions({"1": "a"}, {"1": ["a"]}, domains={}, log=_quiet)


def test_caption_formats_errors():
    with pytest.raises(ValueError, match="image_id 1 occurs more than once"):
        formats.parse_caption_predictions([{"image_id": 1, "caption": "a"}] * 2)
    with pytest.raises(ValueError, match=r"predictions\[0\]: missing key\(s\) \['caption'\]"):
        formats.parse_caption_predictions([{"image_id": 1, "text": "a"}])
    with pytest.raises(ValueError, match="COCO result format"):
        formats.parse_caption_predictions({"1": "a"})
    with pytest.raises(ValueError, match=r"annotations.images\[0\]: missing key\(s\) \['domain'\]"):
        formats.parse_caption_references(
            {"images": [{"id": 1}], "annotations": [{"image_id": 1, "caption": "a"}]},
            need_domains=True,
        )
    refs = formats.parse_caption_references(
        {"annotations": [{"image_id": 5, "caption": "a"}, {"image_id": 5, "caption": "b"}]}
    )
    assert refs.captions == {"5": ["a", "b"]} and refs.domains is None


def test_caption_ids_must_match(tmp_path):
    pred, ann = _write_nocaps(tmp_path, {"1": "a dog", "9": "x"})
    with pytest.raises(ValueError, match="has 1 image_id\\(s\\) that are not in annotations"):
        score_files("coco_caption", pred, ann, log=_quiet)
    pred, ann = _write_nocaps(tmp_path, {"1": "a dog"})
    with pytest.raises(ValueError, match="lacks 3 of the 4 image_ids .*--allow-subset"):
        score_files("coco_caption", pred, ann, log=_quiet)
