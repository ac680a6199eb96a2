import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # ggml_oracle, reference/

# hypothesis: deterministic in CI, a few more examples by hand
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=60)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def minilm_layer():
    """A real weight: all-MiniLM-L6-v2 encoder.layer.0.intermediate.dense, (1536, 384) float32."""
    import qviz

    return qviz.demo.layer("encoder.layer.0.intermediate.dense")
