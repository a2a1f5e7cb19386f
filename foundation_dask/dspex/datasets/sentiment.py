"""Any process: binary sentiment of short reviews, the packaged demo task of DSPEx.

The data set holds short movie, product and restaurant reviews written for this
package, each labelled ``positive`` or ``negative``. The splits are fixed and balanced:

=========  ========  ========  ========
split      positive  negative  total
=========  ========  ========  ========
``train``  50        50        100
``dev``    50        50        100
``test``   80        80        160
=========  ========  ========  ========

The reviews are one or two sentences long, from blunt ("Such a bad movie.") to
indirect, with negation ("Not a single dull moment in the whole film."), contrast
("Not cheap, but worth every penny."), understatement and a little sarcasm; each has
one clear label. The task is made for few-shot demo selection with a very small local
model. With SmolLM2-135M-Instruct and the completion prompt ::

    Classify the sentiment of a review as positive or negative.

    Review: <demo review>
    Sentiment: <label>

    Review: <the input>
    Sentiment:

the zero-shot accuracy on the test split is about 50 % (the model answers "Positive"
to nearly everything, or a word that is not a label), random sets of 2 to 8 train demos
give anything from about 50 % to 99 % (the model copies the labels of the demos, the
last ones most), and the best of 20 random sets of 4 demos, chosen on the dev split,
reaches 95-98 % on the test split. ``benchmarks/check_demo_task.py`` measures this.

Records are stored as JSON lines in ``sentiment.jsonl`` next to this module::

    {"id": 0, "review": "...", "sentiment": "positive", "split": "train"}

Examples
--------
>>> from foundation_dask.dspex.datasets import load_sentiment, sentiment_metric
>>> train, dev, test = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=0)
>>> sentiment_metric(test[0], {"sentiment": test[0].sentiment.upper() + "."})
1.0
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import string
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DATA_FILE",
    "LABELS",
    "SENTIMENT_INSTRUCTIONS",
    "SPLITS",
    "load_sentiment",
    "load_sentiment_frame",
    "load_sentiment_split",
    "normalize_sentiment",
    "sentiment_metric",
]

#: Instruction line of the task, as used by the reference prompt.
SENTIMENT_INSTRUCTIONS = "Classify the sentiment of a review as positive or negative."

#: The two labels, in a fixed order.
LABELS: tuple[str, ...] = ("positive", "negative")

#: The fixed splits, in the order :func:`load_sentiment` returns them.
SPLITS: tuple[str, ...] = ("train", "dev", "test")

#: Name of the data file inside this package.
DATA_FILE = "sentiment.jsonl"

_FIELDS = ("id", "review", "sentiment", "split")
_PUNCTUATION_TO_SPACE = str.maketrans({c: " " for c in string.punctuation})


@functools.lru_cache(maxsize=1)
def _records() -> tuple[dict[str, Any], ...]:
    """Read and check the packaged records once.

    Returns
    -------
    tuple of dict
        The records in file order, each with the keys ``id``, ``review``,
        ``sentiment`` and ``split``.

    Raises
    ------
    ValueError
        If a line is not a valid record.
    """
    resource = importlib.resources.files(__package__).joinpath(DATA_FILE)
    records = []
    with resource.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            if (
                set(record) != set(_FIELDS)
                or record["sentiment"] not in LABELS
                or record["split"] not in SPLITS
            ):
                raise ValueError(f"{DATA_FILE}, line {lineno}: not a valid record: {record!r}")
            records.append({k: record[k] for k in _FIELDS})
    return tuple(records)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; the splits are {', '.join(SPLITS)}")
    return split


def _check_n(name: str, n: Any, available: int, split: str) -> None:
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"{name} must be an int or None, got {n!r}")
    if n < 0:
        raise ValueError(f"{name} must be >= 0, got {n}")
    if n > available:
        raise ValueError(
            f"{name}={n} exceeds the {available} examples of the {split!r} split "
            f"(at most {available})"
        )


def _to_example(record: Mapping[str, Any]) -> Any:
    from foundation_dask.dspex import Example

    return Example(review=record["review"], sentiment=record["sentiment"]).with_inputs("review")


def _sample(split: str, n: int | None, seed: int) -> list[dict[str, Any]]:
    """Records of ``split``: all of them in file order, or a balanced sample of ``n``."""
    records = [dict(r) for r in _records() if r["split"] == split]
    if n is None:
        return records
    # A string seed is hashed with SHA-512 by ``random.Random``: stable across runs,
    # platforms and Python versions, and independent for each split.
    rng = random.Random(f"sentiment/{split}/{seed}")
    by_label = {label: [r for r in records if r["sentiment"] == label] for label in LABELS}
    counts = {label: n // len(LABELS) for label in LABELS}
    for label in rng.sample(LABELS, n % len(LABELS)):
        counts[label] += 1
    chosen = [r for label in LABELS for r in rng.sample(by_label[label], counts[label])]
    rng.shuffle(chosen)
    return chosen


def load_sentiment_split(
    split: str, n: int | None = None, seed: int = 0, *, as_examples: bool = True
) -> list[Any]:
    """Load one split, whole or as a balanced, seeded subsample.

    Parameters
    ----------
    split : {"train", "dev", "test"}
        Name of the split.
    n : int, optional
        Number of examples. ``None`` (the default) returns the whole split in file
        order. Otherwise ``n`` examples are drawn without replacement, half of each
        label (for an odd ``n`` the label of the extra example is drawn too), and
        shuffled; the draw depends only on ``split``, ``n`` and ``seed``.
    seed : int, default 0
        Seed of the draw.
    as_examples : bool, default True
        Return :class:`foundation_dask.dspex.Example` objects with input ``review``
        and label ``sentiment``. ``False`` returns the raw records as dicts.

    Returns
    -------
    list
        Examples (or dicts) of the split.

    Raises
    ------
    ValueError
        If ``split`` is unknown, or ``n`` is negative, not an int, or larger than the
        split.
    """
    _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    available = sum(1 for r in _records() if r["split"] == split)
    _check_n("n", n, available, split)
    records = _sample(split, n, seed)
    return [_to_example(r) for r in records] if as_examples else records


def load_sentiment(
    n_train: int | None = None,
    n_dev: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    *,
    as_examples: bool = True,
) -> tuple[list[Any], list[Any], list[Any]]:
    """Load the train, dev and test splits of the sentiment task.

    Parameters
    ----------
    n_train, n_dev, n_test : int, optional
        Size of each returned split. ``None`` (the default) returns the whole split
        (100, 100 and 160 examples) in file order; an int returns a balanced,
        shuffled subsample drawn with ``seed`` (see :func:`load_sentiment_split`).
    seed : int, default 0
        Seed of the subsamples. The same seed always gives the same examples; each
        split is drawn independently.
    as_examples : bool, default True
        Return :class:`foundation_dask.dspex.Example` objects, built as
        ``Example(review=..., sentiment=...).with_inputs("review")``. ``False``
        returns the raw records as dicts.

    Returns
    -------
    train, dev, test : list
        The three splits. No review occurs in two splits.

    Raises
    ------
    ValueError
        If a size is negative, not an int, or larger than its split.

    Examples
    --------
    >>> train, dev, test = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=0)
    >>> len(train), len(dev), len(test)
    (30, 30, 60)
    >>> sorted(train[0].inputs().keys()), train[0].sentiment in LABELS
    (['review'], True)
    """
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    for split, n in sizes.items():
        available = sum(1 for r in _records() if r["split"] == split)
        _check_n(f"n_{split}", n, available, split)
    train, dev, test = (
        load_sentiment_split(split, n, seed, as_examples=as_examples) for split, n in sizes.items()
    )
    return train, dev, test


def load_sentiment_frame(split: str | None = None) -> pd.DataFrame:
    """The raw records as a :class:`pandas.DataFrame`.

    Parameters
    ----------
    split : {"train", "dev", "test"}, optional
        Keep only this split. ``None`` (the default) keeps all records.

    Returns
    -------
    pandas.DataFrame
        One row per record, in file order, with the columns ``id`` (int),
        ``review``, ``sentiment`` and ``split`` (str).

    Raises
    ------
    ValueError
        If ``split`` is unknown.
    """
    import pandas as pd

    records = _records()
    if split is not None:
        _check_split(split)
        records = tuple(r for r in records if r["split"] == split)
    frame = pd.DataFrame(list(records), columns=list(_FIELDS))
    return frame.astype({"id": "int64"}).reset_index(drop=True)


def normalize_sentiment(text: Any) -> str:
    """Normalise a label as produced by a language model.

    Parameters
    ----------
    text : Any
        The raw output; ``None`` counts as empty, other objects are converted with
        :class:`str`.

    Returns
    -------
    str
        The first word of ``text`` after lowercasing and turning punctuation into
        whitespace, or ``""`` when there is none: ``" Positive."`` gives
        ``"positive"``, ``"NEGATIVE!\\nbecause..."`` gives ``"negative"``.
    """
    if text is None:
        return ""
    words = str(text).lower().translate(_PUNCTUATION_TO_SPACE).split()
    return words[0] if words else ""


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``; a plain string stands for the field itself."""
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Mapping):
        return obj.get(name)
    value = getattr(obj, name, None)
    if value is None:
        try:
            value = obj[name]
        except (KeyError, IndexError, TypeError):
            value = None
    return value


def sentiment_metric(example: Any, prediction: Any, trace: Any = None) -> float:
    """Exact-match metric on the normalised label, with the DSPy metric signature.

    Parameters
    ----------
    example : Example, Mapping or str
        The gold example; its ``sentiment`` field is the label (a plain string is
        taken as the label itself).
    prediction : Prediction, Mapping or str
        The program's output; its ``sentiment`` field (or the string itself) is
        compared after :func:`normalize_sentiment`.
    trace : Any, optional
        Ignored; part of the DSPy metric signature.

    Returns
    -------
    float
        ``1.0`` when the normalised prediction equals the gold label, else ``0.0``.

    Examples
    --------
    >>> sentiment_metric({"sentiment": "positive"}, {"sentiment": " Positive."})
    1.0
    >>> sentiment_metric({"sentiment": "negative"}, "neg")
    0.0
    """
    gold = normalize_sentiment(_field(example, "sentiment"))
    predicted = normalize_sentiment(_field(prediction, "sentiment"))
    return 1.0 if gold and predicted == gold else 0.0
