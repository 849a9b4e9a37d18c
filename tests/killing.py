"""Stand-in for killing a training run right after an epoch's backup was written."""

import keras
import pytest


class Killed(Exception):
    """Raised by the callback `run_killed_after_epoch` adds."""


def run_killed_after_epoch(monkeypatch, module, factory, run, epoch):
    """Calls `run()` with one more callback that raises `Killed` at the end of `epoch`
    (0-based), appended to the list `module.<factory>(...)` returns (callbacks that come
    after BackupAndRestore, so that epoch's backup exists); then restores the factory."""
    original = getattr(module, factory)

    class KillAfterEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, index, logs=None):
            if index == epoch:
                raise Killed

    monkeypatch.setattr(module, factory, lambda *args: original(*args) + [KillAfterEpoch()])
    with pytest.raises(Killed):
        run()
    monkeypatch.setattr(module, factory, original)
