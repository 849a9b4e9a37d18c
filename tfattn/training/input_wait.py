"""Is training input-bound? Two numbers answer it, for any app's tf.data pipeline.

- `benchmark_pipeline(dataset)`: the pipeline's own throughput (images/s), without a model.
- `InputWaitCallback`: the share of each training step spent waiting for a batch.

The pipeline is not the bottleneck when its images/s is well above the training images/s
(it shares the CPU with the training step, so aim for 2x) and the wait fraction is small
(< ~5%).

    input_wait = InputWaitCallback()
    model.fit(input_wait.wrap(train_ds), epochs=3, callbacks=[input_wait, tensorboard])
    input_wait.summary()["fraction"], benchmark_pipeline(train_ds)["images_per_s"]
"""

import logging
import math
import threading
import time

import keras
import tensorflow as tf

logger = logging.getLogger(__name__)

def benchmark_pipeline(dataset, steps=50, warmup=5):
    """Throughput of a batched tf.data pipeline on its own, without a model.

    Iterates `warmup` batches untimed (filling shuffle and prefetch buffers), then times
    `steps` batches, repeating the dataset when it is shorter.

    Args:
        dataset: yields batches whose first component has the batch on its first axis.
        steps: batches timed.
        warmup: batches read before timing.

    Returns:
        dict with "steps", "seconds", "batches_per_s" and "images_per_s". Compare
        "images_per_s" with the training images/s (`InputWaitCallback.summary()`).

    Example:
        benchmark_pipeline(make_pipeline(x, y, 128, True, augment=Augment()))
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    iterator = iter(dataset.repeat())
    try:
        for _ in range(warmup):
            next(iterator)
        images = 0
        start = time.perf_counter()
        for _ in range(steps):
            images += int(tf.shape(tf.nest.flatten(next(iterator))[0])[0])
        seconds = time.perf_counter() - start
    except StopIteration:
        raise ValueError("benchmark_pipeline: the dataset yields no batches") from None
    return {
        "steps": steps,
        "seconds": seconds,
        "batches_per_s": steps / seconds,
        "images_per_s": images / seconds,
    }


class InputWaitCallback(keras.callbacks.Callback):
    """Measures the share of training step time `fit` spends waiting for input batches.

    Keras 3 (TensorFlow and JAX backends) fetches each batch inside the train step, so
    callback times alone cannot separate input from compute. `wrap(dataset)` makes the
    dataset time each fetch itself: it stamps (`tf.timestamp`) when the training loop asks
    for a batch and when the batch arrives. A step's wait is the sum of the fetch times
    inside it; its step time is `on_train_batch_begin` to `on_train_batch_end` on the host.
    The first `warmup` steps of `fit` (tracing, compilation, filling buffers) are left out.

    At each epoch end `logs["input_wait_fraction"]` holds that epoch's fraction, so it
    reaches History and TensorBoard (put this callback before TensorBoard in the list). An
    epoch without a measured step (all warm-up, e.g. a short first epoch) logs nothing
    rather than NaN, so History's list can be shorter than the epochs run. Without `wrap`
    there is nothing to measure: nothing is logged, `summary()` holds NaN and a warning says
    so at the end of `fit`.

    Reading it: a fraction below ~5% means the model step, not the input, sets the pace;
    above, compare `benchmark_pipeline(dataset)["images_per_s"]` with
    `summary()["images_per_s"]` and speed up the pipeline (more cores, lighter augmentation,
    `cache()` after deterministic work) or give the step more work per batch.

    Caveats: with `steps_per_execution > 1` batch callbacks fire once per execution, so a
    "step" here is one execution of several batches (waits of all its batches are summed).
    Under a tf.distribute strategy that prefetches to devices, fetches happen on a
    background thread and the wait is that of the host pipeline, not of the step. Creating
    the dataset iterator at each epoch start (about a second with RandAugment's large graph)
    is not counted as wait; under JAX it lands in the first step's time. The `wrap` stage
    runs one small Python function per batch. Wrap the training dataset only.

    Args:
        warmup: training steps at the start of `fit` that are not counted.

    Example:
        input_wait = InputWaitCallback()
        model.fit(input_wait.wrap(train_ds), epochs=3, callbacks=[input_wait, tensorboard])
        input_wait.summary()  # {"steps", "mean_step_ms", "mean_wait_ms", "fraction",
                              #  "images_per_s"}
    """

    def __init__(self, warmup=5):
        super().__init__()
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.warmup = warmup
        self._lock = threading.Lock()
        self._fetches = []  # (wait seconds, images) of fetches since the last step ended
        self._reset()

    def _reset(self):
        self._seen_steps = 0
        self._step_s, self._wait_s, self._images = [], [], []  # per measured step
        self._epoch_start = 0

    def wrap(self, dataset):
        """`dataset` with each batch's fetch time recorded for this callback; same elements."""
        # Zip pulls from its inputs in order: the first stamp is taken when the consumer
        # asks for a batch, the second (in the map) once the batch has arrived.
        asked = tf.data.Dataset.from_tensors(0).repeat().map(lambda _: tf.timestamp())
        return tf.data.Dataset.zip((asked, dataset)).map(self._stamp)

    def _stamp(self, asked, batch):
        wait = tf.timestamp() - asked
        images = tf.shape(tf.nest.flatten(batch)[0])[0]
        done = tf.py_function(self._record, [wait, images], tf.int32)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, batch)

    def _record(self, wait, images):
        with self._lock:
            self._fetches.append((float(wait), int(images)))
        return 0

    def _take_fetches(self):
        with self._lock:
            fetches, self._fetches = self._fetches, []
        return fetches

    def on_train_begin(self, logs=None):
        self._reset()
        self._take_fetches()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = len(self._step_s)
        self._take_fetches()  # anything fetched outside training steps

    def on_train_batch_begin(self, batch, logs=None):
        self._begin = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        step_s = time.perf_counter() - self._begin
        fetches = self._take_fetches()
        self._seen_steps += 1
        if self._seen_steps <= self.warmup:
            return
        self._step_s.append(step_s)
        self._wait_s.append(sum(w for w, _ in fetches))
        self._images.append(sum(n for _, n in fetches))

    def on_epoch_end(self, epoch, logs=None):
        fraction = self._fraction(self._epoch_start)
        if logs is not None and not math.isnan(fraction):  # no samples: no value, not NaN
            logs["input_wait_fraction"] = fraction

    def on_train_end(self, logs=None):
        if self._step_s and not sum(self._images):
            logger.warning(
                "InputWaitCallback saw no batches from a wrapped dataset, so it reports NaN "
                "waits: fit on input_wait.wrap(train_ds) instead of train_ds"
            )

    def _fraction(self, start=0):
        # No fetches recorded: the dataset was not wrapped; NaN rather than a false 0.
        if not sum(self._images[start:]):
            return math.nan
        return sum(self._wait_s[start:]) / sum(self._step_s[start:])

    @property
    def input_wait_fraction(self):
        """Share of measured step time spent waiting for input; NaN before any."""
        return self._fraction()

    def summary(self):
        """Steps measured, mean step and wait ms, wait fraction and training images/s."""
        steps, step_s, images = len(self._step_s), sum(self._step_s), sum(self._images)
        return {
            "steps": steps,
            "mean_step_ms": 1000 * step_s / steps if steps else math.nan,
            "mean_wait_ms": 1000 * sum(self._wait_s) / steps if images else math.nan,
            "fraction": self.input_wait_fraction,
            "images_per_s": images / step_s if images else math.nan,
        }
