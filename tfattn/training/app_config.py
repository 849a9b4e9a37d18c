"""`AppConfig`: the run and export fields every app's config shares.

An app's config subclasses it and adds its own data, model and optimisation fields; it
redeclares a field to change its default (redeclared fields keep their place, first):

    @dataclasses.dataclass
    class Config(AppConfig):
        workdir: str = config_field("runs/speech", AppConfig.WORKDIR_HELP)
        export_name: str = config_field("speech", AppConfig.EXPORT_NAME_HELP)
        sample_rate: int = config_field(16000, "audio sample rate, Hz")

`AppConfig.__post_init__` checks the shared fields; call it from the app's own.
"""

import dataclasses
from typing import Literal

from tfattn.training.config import config_field
from tfattn.training.strategy import STRATEGIES

Strategy = Literal[STRATEGIES]
Precision = Literal["float32", "mixed_float16", "mixed_bfloat16"]


@dataclasses.dataclass
class AppConfig:
    """Runtime (strategy, precision, compilation, output folder) and export fields."""

    WORKDIR_HELP = ("output folder (config, TensorBoard, checkpoints, model, export); "
                    "rerun the same command to resume a killed run")
    EXPORT_NAME_HELP = "model name: export/<name>/<version>/, TF Serving's"

    workdir: str = config_field("runs/app", WORKDIR_HELP)
    strategy: Strategy = config_field(
        "auto", "tf.distribute strategy; auto: a TPU, else all GPUs, else the CPU"
    )
    tpu: str | None = config_field(None, "TPU name or address (none: from the environment)")
    precision: Precision = config_field("float32", "dtype policy; mixed: 16-bit math on GPU/TPU")
    jit_compile: bool = config_field(True, "compile the train step with XLA")
    steps_per_execution: int = config_field(1, "batches per compiled call: fewer host round trips")
    seed: int = config_field(0, "seed of the shuffling, initialisation and augmentation")
    verbose: int = config_field(2, "Keras fit output: 0 silent, 1 progress bar, 2 a line per epoch")
    time_budget_minutes: float | None = config_field(
        None, "stop training within this many minutes, at an epoch boundary"
    )
    fit_schedule_to_budget: bool = config_field(
        True, "with a time budget: end the cosine schedule on the last epoch that fits"
    )
    export_name: str = config_field("model", EXPORT_NAME_HELP)
    export_version: int | None = config_field(
        None, "SavedModel version; none: one above the newest existing version"
    )
    overwrite: bool = config_field(False, "replace an existing export version")

    # Fields that may differ when a killed run is resumed (`check_resume(ignore=...)`).
    RESUME_MAY_CHANGE = ("workdir", "verbose", "overwrite", "export_name", "export_version",
                         "time_budget_minutes", "fit_schedule_to_budget")

    def __post_init__(self):
        if self.steps_per_execution < 1:
            raise ValueError(f"`steps_per_execution` must be >= 1; got {self.steps_per_execution}.")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2; got {self.verbose}.")
        if self.time_budget_minutes is not None and not self.time_budget_minutes > 0:
            raise ValueError(
                f"`time_budget_minutes` must be > 0 or none; got {self.time_budget_minutes}."
            )
        if self.export_version is not None and self.export_version < 1:
            raise ValueError(f"`export_version` must be >= 1 or none; got {self.export_version}.")
