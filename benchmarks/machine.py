"""Machine description recorded in every benchmark's results JSON."""

import os
import platform
import sys

import psutil


def load_average():
    """1/5/15-minute load averages, rounded; None where the OS has none."""
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpuinfo():
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def machine_info():
    cpu = _cpuinfo()
    model = cpu.get("model name") or platform.processor() or "unknown"
    # Cloud hosts often report a bare "AMD EPYC": family/model/stepping tell the generation
    # (family 25 model 1: Zen 3 Milan) and the clock tells hosts of one name apart (the same
    # name has trained the detection benchmark's dense head at 135 and 82 images/s).
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model,
        "cpu_family_model_stepping": "/".join(cpu.get(k, "?") for k in
                                              ("cpu family", "model", "stepping")) if cpu else None,
        "cpu_mhz": float(cpu["cpu MHz"]) if "cpu MHz" in cpu else None,
        "cpu_cache": cpu.get("cache size"),
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
