"""The packaged sentiment task of DSPEx: data file, splits, sampling and metric."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from foundation_dask.dspex.datasets import (
    LABELS,
    SENTIMENT_INSTRUCTIONS,
    SPLITS,
    load_sentiment,
    load_sentiment_frame,
    load_sentiment_split,
    normalize_sentiment,
    sentiment_metric,
)
from foundation_dask.dspex.datasets import sentiment as sentiment_module

SIZES = {"train": 100, "dev": 100, "test": 160}
PACKAGE = "foundation_dask.dspex.datasets"


def _has_example() -> bool:
    """Whether ``foundation_dask.dspex.Example`` can be imported."""
    try:
        from foundation_dask.dspex import Example  # noqa: F401
    except ImportError:
        return False
    return True


def _review(item) -> str:
    return item["review"] if isinstance(item, dict) else item.review


def _reviews(items) -> list[str]:
    return [_review(item) for item in items]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return load_sentiment_frame()


@pytest.mark.timeout(60)
def test_data_file_is_a_package_resource():
    resource = importlib.resources.files(PACKAGE).joinpath("sentiment.jsonl")
    assert resource.is_file()
    lines = [line for line in resource.read_text(encoding="utf-8").splitlines() if line]
    assert len(lines) == sum(SIZES.values())
    first = json.loads(lines[0])
    assert set(first) == {"id", "review", "sentiment", "split"}


@pytest.mark.timeout(60)
def test_frame_columns_and_types(frame):
    assert list(frame.columns) == ["id", "review", "sentiment", "split"]
    assert frame["id"].dtype == "int64"
    assert len(frame) == sum(SIZES.values())
    assert frame["review"].map(lambda r: isinstance(r, str) and r == r.strip() and r).all()


@pytest.mark.timeout(60)
def test_counts_and_balance_per_split(frame):
    for split, size in SIZES.items():
        part = frame[frame["split"] == split]
        assert len(part) == size, split
        counts = part["sentiment"].value_counts().to_dict()
        assert counts == {"positive": size // 2, "negative": size // 2}, split
    assert set(frame["split"]) == set(SPLITS)


@pytest.mark.timeout(60)
def test_labels_valid_and_ids_unique(frame):
    assert set(frame["sentiment"]) == set(LABELS) == {"positive", "negative"}
    assert frame["id"].is_unique
    assert sorted(frame["id"]) == list(range(len(frame)))


@pytest.mark.timeout(60)
def test_no_duplicate_reviews_and_no_leak_between_splits(frame):
    normalised = frame["review"].str.lower().str.strip()
    assert normalised.is_unique
    by_split = {s: set(normalised[frame["split"] == s]) for s in SPLITS}
    assert not by_split["train"] & by_split["dev"]
    assert not by_split["train"] & by_split["test"]
    assert not by_split["dev"] & by_split["test"]


@pytest.mark.timeout(60)
def test_reviews_are_short(frame):
    words = frame["review"].str.split().map(len)
    assert words.max() <= 40
    assert words.min() >= 2


@pytest.mark.timeout(60)
def test_frame_of_one_split(frame):
    test = load_sentiment_frame("test")
    assert len(test) == SIZES["test"]
    assert list(test["id"]) == list(frame.loc[frame["split"] == "test", "id"])


@pytest.mark.timeout(60)
def test_full_splits_as_records(frame):
    train, dev, test = load_sentiment(as_examples=False)
    assert [len(train), len(dev), len(test)] == [SIZES[s] for s in SPLITS]
    for split, records in zip(SPLITS, (train, dev, test), strict=True):
        assert {r["split"] for r in records} == {split}
        assert [r["id"] for r in records] == list(frame.loc[frame["split"] == split, "id"])


@pytest.mark.timeout(60)
def test_subsample_is_balanced_and_inside_its_split():
    train, dev, test = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=0, as_examples=False)
    for split, records, n in zip(SPLITS, (train, dev, test), (30, 30, 60), strict=True):
        assert len(records) == n
        assert {r["split"] for r in records} == {split}
        assert sum(r["sentiment"] == "positive" for r in records) == n // 2
        assert len({r["id"] for r in records}) == n


@pytest.mark.timeout(60)
def test_odd_subsample_differs_by_one():
    records = load_sentiment_split("dev", 7, seed=3, as_examples=False)
    positives = sum(r["sentiment"] == "positive" for r in records)
    assert positives in (3, 4)


@pytest.mark.timeout(60)
def test_subsampling_deterministic_for_a_seed():
    first = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=0, as_examples=False)
    again = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=0, as_examples=False)
    other = load_sentiment(n_train=30, n_dev=30, n_test=60, seed=1, as_examples=False)
    assert first == again
    for a, b in zip(first, other, strict=True):
        assert _reviews(a) != _reviews(b)
        assert set(_reviews(a)) != set(_reviews(b))


@pytest.mark.timeout(60)
def test_subsample_does_not_depend_on_other_sizes():
    a = load_sentiment(n_train=10, n_dev=20, n_test=30, seed=5, as_examples=False)
    b = load_sentiment(n_train=10, n_dev=40, n_test=None, seed=5, as_examples=False)
    assert a[0] == b[0]
    assert a[0] == load_sentiment_split("train", 10, seed=5, as_examples=False)


@pytest.mark.timeout(60)
def test_subsample_of_whole_split_is_a_permutation():
    full = load_sentiment_split("train", as_examples=False)
    shuffled = load_sentiment_split("train", SIZES["train"], seed=0, as_examples=False)
    assert sorted(r["id"] for r in shuffled) == sorted(r["id"] for r in full)
    assert load_sentiment_split("train", 0, as_examples=False) == []


@pytest.mark.timeout(60)
def test_records_are_copies():
    train = load_sentiment_split("train", as_examples=False)
    train[0]["sentiment"] = "mutated"
    assert load_sentiment_split("train", as_examples=False)[0]["sentiment"] in LABELS


@pytest.mark.timeout(60)
@pytest.mark.skipif(not _has_example(), reason="foundation_dask.dspex.Example not available")
def test_examples_have_review_as_input():
    train, dev, test = load_sentiment(n_train=4, n_dev=4, n_test=4, seed=0)
    for example in (*train, *dev, *test):
        assert set(example.inputs().keys()) == {"review"}
        assert set(example.labels().keys()) == {"sentiment"}
        assert example.sentiment in LABELS
    records = load_sentiment_split("train", 4, seed=0, as_examples=False)
    assert _reviews(train) == _reviews(records)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("gold", "predicted", "expected"),
    [
        ("positive", " Positive.", 1.0),
        ("positive", "positive", 1.0),
        ("negative", "NEGATIVE!", 1.0),
        ("negative", "\n  negative\nThe review complains", 1.0),
        ("negative", "negative, clearly", 1.0),
        ("positive", "**Positive**", 1.0),
        ("negative", "neg", 0.0),
        ("positive", "negative", 0.0),
        ("positive", "Sentiment: positive", 0.0),
        ("positive", "", 0.0),
        ("positive", None, 0.0),
    ],
)
def test_metric_normalisation(gold, predicted, expected):
    assert sentiment_metric({"sentiment": gold}, {"sentiment": predicted}) == expected
    assert sentiment_metric({"sentiment": gold}, predicted, trace=None) == expected


@pytest.mark.timeout(60)
def test_metric_reads_attributes():
    class Obj:
        def __init__(self, sentiment):
            self.sentiment = sentiment

    assert sentiment_metric(Obj("positive"), Obj(" Positive."), trace=object()) == 1.0
    assert sentiment_metric(Obj("negative"), Obj("neg")) == 0.0
    assert sentiment_metric(Obj("negative"), object()) == 0.0
    assert isinstance(sentiment_metric(Obj("negative"), Obj("negative")), float)


@pytest.mark.timeout(60)
def test_metric_on_gold_example_is_perfect():
    records = load_sentiment_split("dev", as_examples=False)
    assert all(sentiment_metric(r, r) == 1.0 for r in records)


@pytest.mark.timeout(60)
def test_normalize_sentiment():
    assert normalize_sentiment(" Positive.") == "positive"
    assert normalize_sentiment("...") == ""
    assert normalize_sentiment(None) == ""


@pytest.mark.timeout(60)
def test_instructions_name_both_labels():
    assert SENTIMENT_INSTRUCTIONS == "Classify the sentiment of a review as positive or negative."
    assert all(label in SENTIMENT_INSTRUCTIONS for label in LABELS)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 101}, r"n_train=101 exceeds the 100 examples of the 'train' split"),
        ({"n_dev": 1000}, r"n_dev=1000 exceeds the 100 examples of the 'dev' split"),
        ({"n_test": 161}, r"n_test=161 exceeds the 160 examples of the 'test' split"),
        ({"n_train": -1}, r"n_train must be >= 0, got -1"),
        ({"n_test": 2.5}, r"n_test must be an int or None"),
        ({"n_dev": True}, r"n_dev must be an int or None"),
        ({"seed": "zero"}, r"seed must be an int"),
    ],
)
def test_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_sentiment(as_examples=False, **kwargs)


@pytest.mark.timeout(60)
def test_unknown_split():
    with pytest.raises(ValueError, match=r"unknown split 'validation'.*train, dev, test"):
        load_sentiment_split("validation")
    with pytest.raises(ValueError, match=r"unknown split 'Train'"):
        load_sentiment_frame("Train")
    with pytest.raises(ValueError, match=r"n=200 exceeds the 160 examples of the 'test' split"):
        load_sentiment_split("test", 200)


@pytest.mark.timeout(60)
def test_loader_does_not_import_the_language_model():
    spec = importlib.util.find_spec(PACKAGE + ".sentiment")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text(encoding="utf-8")
    assert "llama_cpp" not in source
    assert sentiment_module.DATA_FILE == "sentiment.jsonl"
