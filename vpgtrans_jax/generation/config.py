"""Decoding settings: a frozen, hashable dataclass (a jitted decoder compiles once per setting)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

EarlyStopping = bool | str  # True, False or "never" (Hugging Face semantics)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """What ``generate`` does; field meanings follow ``transformers.GenerationConfig``.

    Attributes:
      max_new_tokens: number of tokens to generate at most (the output width).
      min_new_tokens: EOS is forbidden before this many new tokens.
      num_beams: 1 = greedy / sampling, > 1 = beam search (beam sampling with ``do_sample``).
      length_penalty: beam score = sum log p / (new length ** length_penalty).
      early_stopping: beam search stop rule: True (stop when ``num_beams`` hypotheses are done),
        False (HF heuristic) or "never" (canonical beam search).
      do_sample: sample instead of taking the arg-max (``temperature``, ``top_k``, ``top_p``).
      repetition_penalty: CTRL penalty on tokens of the text prompt and of the generated prefix.
      num_return_sequences: sequences per prompt (the best ones for beam search).
      eos_token_ids: generation of a row ends at any of these ids.
      pad_token_id: written after a row's EOS.
    """

    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    min_new_tokens: int = 0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: EarlyStopping = False
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        _check_int("min_new_tokens", self.min_new_tokens, 0)
        _check_int("num_beams", self.num_beams, 1)
        _check_int("num_return_sequences", self.num_return_sequences, 1)
        _check_int("top_k", self.top_k, 0)
        _check_int("pad_token_id", self.pad_token_id, 0)
        if not self.eos_token_ids:
            raise ValueError("eos_token_id: expected at least one end-of-sequence id, got none")
        for e in self.eos_token_ids:
            _check_int("eos_token_id", e, 0)
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(
                f"early_stopping={self.early_stopping!r}: expected True, False or 'never'"
            )
        if not (self.temperature > 0.0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature={self.temperature!r}: expected a positive number")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p!r}: expected a number in (0, 1]")
        if not (self.repetition_penalty > 0.0 and np.isfinite(self.repetition_penalty)):
            raise ValueError(
                f"repetition_penalty={self.repetition_penalty!r}: expected a positive number"
            )
        if not np.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty={self.length_penalty!r}: expected a finite number")
        if self.num_beams == 1 and not self.do_sample and self.num_return_sequences > 1:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} needs beam search "
                "(num_beams > 1) or sampling (do_sample=True): greedy decoding gives one sequence"
            )
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"num_return_sequences={self.num_return_sequences} must be <= "
                f"num_beams={self.num_beams}"
            )

    @property
    def is_beam(self) -> bool:
        return self.num_beams > 1

    @property
    def expand(self) -> int:
        """Rows per prompt while decoding: beams, or independent samples."""
        return self.num_beams if self.is_beam else self.num_return_sequences

    @property
    def min_tokens_to_keep(self) -> int:
        """Top-k / top-p never keep fewer tokens (HF keeps EOS + 1 alternatives in beams)."""
        return len(self.eos_token_ids) + 1 if self.is_beam else 1

    @classmethod
    def make(
        cls, *, eos_token_id: int | Sequence[int], pad_token_id: int, **kw
    ) -> GenerationConfig:
        """Like the constructor, but ``eos_token_id`` may be one int or a list."""
        if isinstance(eos_token_id, int | np.integer):
            eos = (int(eos_token_id),)
        else:
            eos = tuple(int(e) for e in eos_token_id)
        return cls(eos_token_ids=eos, pad_token_id=int(pad_token_id), **kw)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")


def length_penalty_table(max_new_tokens: int, length_penalty: float) -> np.ndarray:
    """float32[M]: entry i is ``(i + 1) ** length_penalty``, computed in float64 like HF's
    Python scalar and rounded once, so beam scores divide by exactly the same number."""
    return np.array(
        [float(n) ** length_penalty for n in range(1, max_new_tokens + 1)], dtype=np.float32
    )
