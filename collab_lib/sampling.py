"""How the study samples text (RQ1 pass@k, RQ2, RQ3): the settings, the stop rules, and the
version every artifact of sampled text carries in its key. The batched KV-cache decoder that
draws the tokens is :mod:`collab_lib.decoding` (torch), imported only where text is sampled,
so planning a step never loads torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# In the key of every artifact of sampled text: a new decoder (collab_lib.decoding) can change a
# draw's last bits; bump it with any change there.
VERSION = 2


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are drawn. ``temperature`` 0 is greedy; ``top_k`` 0 and ``top_p`` 1 are off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128


def stop_at(text: str, stops: Sequence[str]) -> str:
    """``text`` cut at the first occurrence of any of ``stops`` (the stop string dropped)."""
    end = first_stop(text, stops)
    return text if end is None else text[:end]


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first of ``stops`` starts in ``text``, or None."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=None)
