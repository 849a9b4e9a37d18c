"""Learning-rate schedules: linear warmup then cosine decay, serialisable with the optimizer.

Example:
>>> schedule = warmup_cosine(1e-3, epochs=30, steps_per_epoch=50, warmup_epochs=3)
>>> model.compile(optimizer=keras.optimizers.AdamW(schedule), loss=...)
>>> model.save("model.keras")  # the schedule is saved with the optimizer and reloads as is
"""

import math

import keras
from keras import ops


def _check_non_negative_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative int; got {value!r}.")


@keras.saving.register_keras_serializable(package="tfattn")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to a peak, then cosine decay to an end value.

    For optimizer step `s` (0-based, the value of `optimizer.iterations`):
    - `s < warmup_steps`: `peak_learning_rate * s / warmup_steps` (0 at step 0, like
      `keras.optimizers.schedules.CosineDecay` and optax' `warmup_cosine_decay_schedule`);
    - `warmup_steps <= s <= total_steps`: `end + (peak - end) * (1 + cos(pi * p)) / 2` with
      `p = (s - warmup_steps) / (total_steps - warmup_steps)`;
    - `s > total_steps`: `end_learning_rate` (training past the plan keeps the end value).

    Args:
        peak_learning_rate: positive float, the rate reached at the end of warmup.
        total_steps: positive int, warmup included (`epochs * steps_per_epoch`).
        warmup_steps: int in [0, total_steps); 0 starts at the peak.
        end_learning_rate: float in [0, peak_learning_rate], the rate at `total_steps`.
        resizable: keep `total_steps` in a variable so `resize` can change the plan while
            a compiled training step runs (`TimeBudget` shortens the schedule to end when a
            wall-clock budget does). Create it under the strategy's scope. TensorFlow
            backend: JAX's compiled step reads the value it was traced with.
        name: name scope of the schedule.

    Returns:
        Called with a step, a float32 scalar learning rate.

    Example:
    >>> schedule = WarmupCosine(1e-3, total_steps=1000, warmup_steps=100)
    >>> round(float(schedule(100)), 6)
    0.001
    """

    def __init__(
        self,
        peak_learning_rate,
        total_steps,
        warmup_steps=0,
        end_learning_rate=0.0,
        resizable=False,
        name="WarmupCosine",
    ):
        super().__init__()
        if not isinstance(peak_learning_rate, (int, float)) or not peak_learning_rate > 0:
            raise ValueError(
                f"`peak_learning_rate` must be a positive float; got {peak_learning_rate!r}."
            )
        _check_non_negative_int("total_steps", total_steps)
        _check_non_negative_int("warmup_steps", warmup_steps)
        if total_steps == 0:
            raise ValueError("`total_steps` must be a positive int; got 0.")
        if warmup_steps >= total_steps:
            raise ValueError(
                f"`warmup_steps` ({warmup_steps}) must be < `total_steps` ({total_steps}), "
                "leaving at least one step of cosine decay."
            )
        if (
            not isinstance(end_learning_rate, (int, float))
            or not 0.0 <= end_learning_rate <= peak_learning_rate
        ):
            raise ValueError(
                f"`end_learning_rate` must be a float in [0, peak_learning_rate="
                f"{peak_learning_rate}]; got {end_learning_rate!r}."
            )
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.end_learning_rate = end_learning_rate
        self.resizable = bool(resizable)
        self.name = name
        self._total_steps = None
        if self.resizable:
            self._total_steps = keras.Variable(
                float(total_steps), dtype="float32", trainable=False, name="total_steps"
            )

    def resize(self, total_steps):
        """Changes the planned length: the cosine now reaches its end at `total_steps`.

        Steps already taken keep their rates; the rest of the decay is stretched or squeezed
        to the new end (a shorter plan lowers the current rate a little).
        """
        if not self.resizable:
            raise ValueError("This WarmupCosine was built with resizable=False; it cannot resize.")
        _check_non_negative_int("total_steps", total_steps)
        if total_steps <= self.warmup_steps:
            raise ValueError(
                f"`total_steps` ({total_steps}) must be > `warmup_steps` ({self.warmup_steps})."
            )
        self.total_steps = total_steps
        self._total_steps.assign(float(total_steps))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_learning_rate, "float32")
        end = ops.cast(self.end_learning_rate, "float32")
        # max(.., 1) keeps the unused branch finite when warmup_steps == 0.
        warmup = peak * step / float(max(self.warmup_steps, 1))
        total = (
            ops.cast(self._total_steps, "float32")
            if self._total_steps is not None
            else float(self.total_steps)
        )
        decay_steps = total - float(self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = end + (peak - end) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "end_learning_rate": self.end_learning_rate,
            "resizable": self.resizable,
            "name": self.name,
        }


def warmup_cosine(
    peak_learning_rate,
    epochs,
    steps_per_epoch,
    warmup_epochs=0,
    end_learning_rate=0.0,
    resizable=False,
):
    """A `WarmupCosine` schedule sized in epochs, the unit app configs use.

    Args:
        peak_learning_rate: positive float, the rate after warmup.
        epochs: positive int, the planned number of epochs.
        steps_per_epoch: positive int, optimizer steps per epoch (global batches).
        warmup_epochs: epochs of linear warmup, < epochs; a float is allowed (0.5 = half an epoch).
        end_learning_rate: the rate at the last step.
        resizable: see `WarmupCosine` (for `TimeBudget(schedule=...)`).

    Returns:
        `WarmupCosine` with `total_steps = epochs * steps_per_epoch` and
        `warmup_steps = round(warmup_epochs * steps_per_epoch)`.
    """
    for name, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    if not isinstance(warmup_epochs, (int, float)) or not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"`warmup_epochs` must be a number in [0, epochs={epochs}); got {warmup_epochs!r}."
        )
    return WarmupCosine(
        peak_learning_rate,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
        end_learning_rate=end_learning_rate,
        resizable=resizable,
    )
