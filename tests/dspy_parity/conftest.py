"""Fresh DSPEx settings for every parity test (DSPy's tests reset ``dspy.settings`` the
same way in their ``conftest.py``)."""

from __future__ import annotations

import pytest

from foundation_dask import dspex


@pytest.fixture(autouse=True)
def clear_settings():
    dspex.settings.reset()
    yield
    dspex.settings.reset()
