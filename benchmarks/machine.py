"""Machine description recorded in every benchmark's results JSON."""

import os
import platform
import sys

import psutil


def load_average():
    """1/5/15-minute load averages, rounded; None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine_info():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        model = platform.processor() or model
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_start": load_average(),
        "gpus": _gpus(),
    }


def _gpus():
    """Accelerators the process sees: JAX's in a JAX process (the GPU machines carry no
    TensorFlow), else TensorFlow's."""
    if "jax" in sys.modules or os.environ.get("KERAS_BACKEND") == "jax":
        import jax

        return [str(d) for d in jax.devices() if d.platform != "cpu"]
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]
