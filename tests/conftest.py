import gc
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

_TESTS_RUN = itertools.count(1)
# A full garbage collection costs ~0.3 s with TensorFlow loaded; after every test it was
# ~5 minutes of a `make test` run. Collect every few tests instead: memory stays bounded.
GC_EVERY = 20


@pytest.fixture(autouse=True)
def _reset_keras_state():
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session(free_memory=False)
    if next(_TESTS_RUN) % GC_EVERY == 0:
        gc.collect()
