"""Any process: DSPy's standard metrics, exact match and passage match (they run where the
evaluation runs, on the Dask workers).

``metric(example, prediction, trace=None)`` functions usable with
:class:`~foundation_dask.dspex.Evaluate` and the optimizers, and the SQuAD-style text
normalisation and scores they are built on.

>>> from foundation_dask import dspex
>>> dspex.answer_exact_match(dspex.Example(answer="Eiffel Tower"),
...                          dspex.Prediction(answer="the Eiffel tower!"))
True
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from typing import Any

__all__ = ["EM", "F1", "answer_exact_match", "answer_passage_match", "em_score", "f1_score",
           "normalize_text"]

_PUNCTUATION = frozenset(string.punctuation)


def normalize_text(s: str) -> str:
    """Unicode NFD, lower case, no punctuation, no English articles, single spaces."""
    s = unicodedata.normalize("NFD", s).lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def em_score(prediction: str, ground_truth: str) -> bool:
    """Whether the two texts are equal once normalised (:func:`normalize_text`)."""
    return normalize_text(prediction) == normalize_text(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """Token-level F1 of the normalised texts (0 when no token is shared)."""
    pred = normalize_text(prediction).split()
    truth = normalize_text(ground_truth).split()
    same = sum((Counter(pred) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def _answers(answers_list: Any) -> list[str]:
    if not isinstance(answers_list, list):
        raise ValueError(f"`answers_list` must be a list, got {type(answers_list)}")
    return answers_list


def EM(prediction: str, answers_list: list[str]) -> bool:  # noqa: N802  (DSPy's name)
    """Whether ``prediction`` exactly matches any of the answers once normalised."""
    return max(em_score(prediction, a) for a in _answers(answers_list))


def F1(prediction: str, answers_list: list[str]) -> float:  # noqa: N802  (DSPy's name)
    """The best token-level F1 of ``prediction`` against the answers."""
    return max(f1_score(prediction, a) for a in _answers(answers_list))


def _answer_list(example: Any) -> list[str]:
    answer = example.answer
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, list):
        return answer
    raise ValueError(f"Invalid answer type: {type(answer)}")


def answer_exact_match(example: Any, pred: Any, trace: Any = None, frac: float = 1.0) -> bool:
    """``pred.answer`` matches ``example.answer`` (a text, or a list of accepted texts).

    ``frac`` below 1 accepts a token F1 of at least ``frac`` instead of an exact match.
    """
    answers = _answer_list(example)
    if frac >= 1.0:
        return EM(pred.answer, answers)
    return F1(pred.answer, answers) >= frac


def _has_answer(passage: str, answers: list[str]) -> bool:
    tokens = normalize_text(passage).split()
    for answer in answers:
        wanted = normalize_text(answer).split()
        if not wanted:
            continue
        for i in range(len(tokens) - len(wanted) + 1):
            if tokens[i:i + len(wanted)] == wanted:
                return True
    return False


def answer_passage_match(example: Any, pred: Any, trace: Any = None) -> bool:
    """Any passage of ``pred.context`` (a list of texts) contains ``example.answer``."""
    answers = _answer_list(example)
    return any(_has_answer(passage, answers) for passage in pred.context)
