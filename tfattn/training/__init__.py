"""Shared training runtime: strategies, callbacks, schedules, export for TF Serving, configs.

Plain functions the apps call around `keras.Model.fit`.
"""

from tfattn.training.callbacks import (
    AttentionMapCallback,
    ConfigTextLogger,
    ImageHookCallback,
    LearningRateLogger,
    TimeBudget,
    current_learning_rate,
    figure_to_image,
    standard_callbacks,
)
from tfattn.training.config import (
    build_parser,
    check_resume,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_config,
    write_config,
)
from tfattn.training.export import (
    call_like_rest,
    export_for_serving,
    export_tflite,
    rest_request_body,
    verify_export,
)
from tfattn.training.schedules import WarmupCosine, warmup_cosine
from tfattn.training.strategy import (
    PRECISIONS,
    STRATEGIES,
    TPUNotFoundError,
    dataset_options,
    enable_multi_worker_fit,
    global_batch_size,
    is_chief,
    parse_tf_config,
    resolve_jit_compile,
    resolve_strategy,
    set_precision,
    worker_dir,
)

__all__ = [
    "PRECISIONS",
    "STRATEGIES",
    "AttentionMapCallback",
    "ConfigTextLogger",
    "ImageHookCallback",
    "LearningRateLogger",
    "TPUNotFoundError",
    "TimeBudget",
    "WarmupCosine",
    "build_parser",
    "call_like_rest",
    "config_from_dict",
    "config_to_dict",
    "current_learning_rate",
    "dataset_options",
    "enable_multi_worker_fit",
    "export_for_serving",
    "export_tflite",
    "figure_to_image",
    "global_batch_size",
    "is_chief",
    "check_resume",
    "load_config",
    "parse_config",
    "parse_tf_config",
    "rest_request_body",
    "resolve_jit_compile",
    "resolve_strategy",
    "set_precision",
    "standard_callbacks",
    "verify_export",
    "warmup_cosine",
    "worker_dir",
    "write_config",
]
