"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA, Python 3 version).

The rules, quirks included, are those of the official ``vqaEval.py`` (which LAVIS copies):

1. ``normalize_punctuation``: for each character of ``PUNCTUATION``, if it touches a space in the
   text (``p + " "`` or ``" " + p`` occurs) or the text contains a comma between two digits
   anywhere, the character is deleted; otherwise it is replaced by a space. Then every ``.`` not
   followed by a digit is deleted ("2.5" keeps its point), at most 32 of them: the official script
   passes ``re.UNICODE`` (= 32) where ``re.sub`` expects ``count``.
2. ``normalize_digits_articles``: lower-case, split on whitespace, number words ``none``/``zero``
   .. ``ten`` become digits, the articles ``a``/``an``/``the`` are dropped, contractions written
   without an apostrophe are restored (``dont`` -> ``don't``), words are joined by single spaces.

A prediction gets ``\\n``/``\\t`` -> space, ``strip``, rule 1, then rule 2 (``normalize_answer``).
Human answers get only rule 1, and only when the ten answers are not all the same string (see
``vqa_metric``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vpgtrans_jax.errors import MissingDependencyError

# Characters handled by rule 1 (the "." has its own rule). Note that ":" and "'" are not in it.
PUNCTUATION: tuple[str, ...] = tuple(';/[]"{}()=+\\_-><@`,?!')

# "1,000": a comma between digits switches rule 1 from "replace by space" to "delete".
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern "(?!<=\d)(\.)(?!\d)" starts with a look-ahead that can never match at a
# ".", so it reduces to: a period not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# re.UNICODE passed positionally as ``count`` in the official script.
_MAX_PERIODS_REMOVED = 32

NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction table, as "written=restored" pairs. Entries with a capital "I" can never
# match (words are lower-cased first) and "somebody'd" maps to "somebodyd": both kept as official.
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=") for pair in _CONTRACTION_PAIRS.split())


def normalize_punctuation(text: str) -> str:
    """Rule 1 of the official script: punctuation deleted or spaced out, trailing periods dropped.

    The delete-or-space decision looks at the *input* text for every character, as officially.
    """
    digits_with_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if digits_with_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def normalize_digits_articles(text: str) -> str:
    """Rule 2: lower-case, number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Full normalisation applied to a predicted answer (VQA v2, OK-VQA and GQA)."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return normalize_digits_articles(normalize_punctuation(text))


def _load_spacy() -> Callable[[str], Any]:
    try:
        import spacy
    except ImportError as e:
        raise MissingDependencyError(
            "Lemmatisation (the LAVIS OK-VQA protocol) needs spaCy, which is not installed: "
            "run `pip install spacy && python -m spacy download en_core_web_sm`, or score "
            "without lemmatisation."
        ) from e
    try:
        return spacy.load("en_core_web_sm")
    except OSError as e:
        raise MissingDependencyError(
            "Lemmatisation needs the spaCy model 'en_core_web_sm', which is not installed: run "
            "`python -m spacy download en_core_web_sm`, or score without lemmatisation."
        ) from e


def lemmatize_answers(
    answers: Sequence[str], nlp: Callable[[str], Iterable[Any]] | None = None
) -> list[str]:
    """Lemmatise answers as LAVIS does for OK-VQA: nouns and verbs become their lemma.

    Every token is kept and the tokens are joined with single spaces (so "dogs." -> "dog ."),
    which the later normalisation undoes for punctuation.

    Args:
      answers: predicted answers.
      nlp: a spaCy pipeline (tokens with ``text``, ``pos_``, ``lemma_``); default
        ``spacy.load("en_core_web_sm")``, with a clear error if spaCy or the model is missing.
    """
    if nlp is None:
        nlp = _load_spacy()
    out = []
    for answer in answers:
        words = [t.lemma_ if t.pos_ in ("NOUN", "VERB") else t.text for t in nlp(answer)]
        out.append(" ".join(words))
    return out
