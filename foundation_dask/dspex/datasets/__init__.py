"""Any process: data sets packaged with DSPEx.

:mod:`~foundation_dask.dspex.datasets.sentiment`
    Binary sentiment of short reviews, with fixed, balanced train/dev/test splits, on
    which the choice of few-shot demonstrations matters for a very small language
    model.
"""

from foundation_dask.dspex.datasets.sentiment import (
    LABELS,
    SENTIMENT_INSTRUCTIONS,
    SPLITS,
    load_sentiment,
    load_sentiment_frame,
    load_sentiment_split,
    normalize_sentiment,
    sentiment_metric,
)

__all__ = [
    "LABELS",
    "SENTIMENT_INSTRUCTIONS",
    "SPLITS",
    "load_sentiment",
    "load_sentiment_frame",
    "load_sentiment_split",
    "normalize_sentiment",
    "sentiment_metric",
]
