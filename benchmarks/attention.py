"""Multi-head attention training-step speed: tfattn vs Keras vs keras-hub, TensorFlow backend.

Times forward + backward (GradientTape on sum(out**2), gradients wrt the layer weights and
the input) inside `tf.function(jit_compile=...)`, for the three layers in one process,
interleaved run by run so that load from other processes hits them alike:

- tfattn `MultiHeadAttention` (`use_fused=None`, the default);
- `keras.layers.MultiHeadAttention`;
- the self-attention sublayer of `keras_hub.layers.TransformerEncoder`, taken from a built
  encoder and called as the encoder calls it. In keras-hub 0.32 that sublayer *is* a
  `keras.layers.MultiHeadAttention`, so this column is a same-class control: its ratio to
  the Keras column shows the run-to-run noise of the machine.

All three get identical weights (same kernel layout), so they do the same work.

Grid: length {64, 197, 1024} x return_attention_scores {off, on} x attention dropout
{0, 0.1} (training=True) x XLA {on, off}; hidden 192, 3 heads of 64, batch 32 (8 at
length 1024, to fit the time budget). Per cell: a warm-up call (trace, XLA compile, one
run), then at least `--min-runs` timed runs (more for fast cells, up to `--max-runs`,
within `--budget-s` per layer); the median is reported.

Memory: peak RSS growth during the first timed step, after `malloc_trim` returned freed heap to
the OS: Linux `VmHWM` reset through `/proc/self/clear_refs` (exact, kernel-tracked), else a
psutil RSS sampling thread. `tf.config.experimental.get_memory_info("CPU:0")` raises
"Allocator stats not available" on CPU (TF 2.21), so it cannot be used.

Targets (tfattn issue): tfattn >= 1.0x Keras in every cell, >= 1.5x where Keras degrades
(attention dropout under XLA; scores at length 1024).

Usage:
    python benchmarks/attention.py                     # full grid (24 cells), 2 CPU cores: 11 min
        # measured with other jobs on the machine (load ~3); 60% of it is Keras's dropout
        # under XLA at length 1024 (~14 s a step there), so an idle machine needs far less.
    python benchmarks/attention.py --quick --out /tmp/attention.json   # smoke run, ~30 s
    python benchmarks/attention.py --lengths 197 --out /tmp/a197.json  # one length of the grid
"""

import argparse
import ctypes
import datetime
import json
import os
import statistics
import sys
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import keras_hub  # noqa: E402
import psutil  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfattn  # noqa: E402
from benchmarks.machine import machine_info  # noqa: E402

# Every cell builds fresh tf.functions on purpose; TF's "excessive retracing" warning is noise.
tf.get_logger().setLevel("ERROR")

HIDDEN, NUM_HEADS, KEY_DIM = 192, 3, 64
IMPLS = ("tfattn", "keras", "keras_hub")
FULL = dict(
    lengths=(64, 197, 1024), scores=(False, True), dropout=(0.0, 0.1), xla=(True, False),
    min_runs=5, max_runs=15, budget_s=1.5,
)
# Smoke test: the headline cell (scores, dropout, XLA) and a plain one (checks losses match).
QUICK = dict(
    cells=((32, 4, True, 0.1, True), (32, 4, False, 0.0, False)),
    min_runs=2, max_runs=2, budget_s=0.0,
)


def batch_size(length):
    # Batch 8 at length >= 1024: Keras's dropout-under-XLA steps there take seconds each, and
    # the full grid has to finish in ~10 minutes on 2 CPU cores.
    return 32 if length < 1024 else 8


# --- memory ---------------------------------------------------------------------------------


def _proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _hwm_supported():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5 = reset the peak-RSS watermark (Linux >= 4.0)
        _proc_status_kib("VmHWM")
        return True
    except (OSError, KeyError):
        return False


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except OSError:  # not glibc
    _malloc_trim = None

_HWM = _hwm_supported()
MEMORY_METHOD = (
    "peak RSS (VmHWM reset via /proc/self/clear_refs) minus RSS before the first timed step"
    if _HWM
    else "peak of psutil RSS sampled every 1 ms minus RSS before the first timed step"
) + (", after malloc_trim(0)" if _malloc_trim else "")


def time_step(fn, probe_memory=False):
    """Runs `fn()` once; returns (milliseconds, peak RSS growth in MiB or None)."""
    if not probe_memory:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3, None
    if _malloc_trim:
        _malloc_trim(0)  # return freed heap pages, else the step reuses them unseen
    if _HWM:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
        ms, _ = time_step(fn)
        return ms, (_proc_status_kib("VmHWM") - before) / 1024
    proc, peak, done = psutil.Process(), [0], threading.Event()
    before = proc.memory_info().rss

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    ms, _ = time_step(fn)
    done.set()
    sampler.join()
    return ms, max(peak[0] - before, 0) / 2**20


# --- layers and steps -------------------------------------------------------------------------


def make_layers(dropout, input_shape):
    """The three attention layers, built, with the Keras layer's weights copied into the others."""
    keras_mha = keras.layers.MultiHeadAttention(NUM_HEADS, KEY_DIM, dropout=dropout)
    keras_mha.build(input_shape, input_shape)
    ours = tfattn.MultiHeadAttention(NUM_HEADS, KEY_DIM, dropout=dropout)
    ours.build(input_shape, input_shape)
    # The encoder derives key_dim = hidden / num_heads and builds its attention sublayer in
    # build(); there is no public accessor, so read the attribute the encoder itself uses.
    encoder = keras_hub.layers.TransformerEncoder(4 * HIDDEN, NUM_HEADS, dropout=dropout)
    encoder.build(input_shape)
    hub = encoder._self_attention_layer
    weights = keras_mha.get_weights()
    ours.set_weights(weights)
    hub.set_weights(weights)
    return {"tfattn": ours, "keras": keras_mha, "keras_hub": hub}


def _class_name(obj):
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def make_step(layer, scores, xla):
    @tf.function(jit_compile=xla, reduce_retracing=True)
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            # Called the way keras-hub's TransformerEncoder calls its attention layer.
            out = layer(
                query=x, value=x, attention_mask=None,
                return_attention_scores=scores, training=True,
            )
            out, weights = out if scores else (out, None)
            loss = tf.reduce_sum(tf.square(out))
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        # Return everything so nothing is pruned; scores come back as a user would get them.
        return (loss, grads, weights) if scores else (loss, grads)

    return step


def run_cell(length, batch, scores, dropout, xla, settings):
    x = tf.random.normal((batch, length, HIDDEN), seed=0)
    layers = make_layers(dropout, (batch, length, HIDDEN))
    steps = {name: make_step(layer, scores, xla) for name, layer in layers.items()}
    res = {name: {} for name in IMPLS}
    losses = {}
    for name in IMPLS:  # warm-up: trace, XLA compile, one run
        t0 = time.perf_counter()
        losses[name] = float(steps[name](x)[0].numpy())
        res[name]["first_call_s"] = round(time.perf_counter() - t0, 3)
    times = {name: [] for name in IMPLS}
    i, n_runs = 0, settings["min_runs"]
    while i < n_runs:
        order = IMPLS[i % 3 :] + IMPLS[: i % 3]  # rotate so no layer always runs first
        for name in order:
            # Memory is probed on the first timed run: the page faults after malloc_trim slow
            # that one run a little, which the median over >= 5 runs absorbs.
            # `.numpy()` on the loss waits for the step to finish.
            ms, mib = time_step(lambda s=steps[name]: s(x)[0].numpy(), probe_memory=i == 0)
            times[name].append(ms)
            if mib is not None:
                res[name]["peak_rss_delta_mib"] = round(mib, 1)
        if i == 0:  # fast cells get more runs, up to budget_s per layer; slow ones min_runs
            slowest_s = max(t[0] for t in times.values()) / 1e3
            n_runs = int(min(settings["max_runs"], max(settings["min_runs"], settings["budget_s"] / slowest_s)))
        i += 1
    for name in IMPLS:
        res[name].update(
            ms_median=round(statistics.median(times[name]), 2),
            ms_min=round(min(times[name]), 2),
            ms_max=round(max(times[name]), 2),
            runs=n_runs,
        )
    ms = {name: res[name]["ms_median"] for name in IMPLS}
    target = 1.5 if (dropout > 0 and xla) or (scores and length >= 1024) else 1.0
    cell = {
        "length": length,
        "batch": batch,
        "return_attention_scores": scores,
        "dropout": dropout,
        "xla": xla,
        "impls": res,
        "ratio_keras_over_tfattn": round(ms["keras"] / ms["tfattn"], 3),
        "ratio_keras_hub_over_tfattn": round(ms["keras_hub"] / ms["tfattn"], 3),
        "ratio_keras_over_keras_hub": round(ms["keras"] / ms["keras_hub"], 3),
        "target": target,
        "meets_target": ms["keras"] / ms["tfattn"] >= target,
    }
    if dropout == 0:
        # Same weights, no randomness: the losses must agree, else the layers differ in work.
        ref = losses["keras"]
        cell["losses_match"] = all(abs(v - ref) <= 1e-4 * abs(ref) for v in losses.values())
    return cell


# --- report ---------------------------------------------------------------------------------


def markdown_table(cells):
    head = (
        "| length | batch | scores | dropout | XLA | tfattn ms | keras ms | keras-hub ms "
        "| keras/tfattn | keras-hub/tfattn | target | meets | peak MiB tfattn / keras / hub |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        r = c["impls"]
        lines.append(
            f"| {c['length']} | {c['batch']} | {'on' if c['return_attention_scores'] else 'off'} "
            f"| {c['dropout']} | {'on' if c['xla'] else 'off'} "
            f"| {r['tfattn']['ms_median']:.1f} | {r['keras']['ms_median']:.1f} "
            f"| {r['keras_hub']['ms_median']:.1f} | {c['ratio_keras_over_tfattn']:.2f}x "
            f"| {c['ratio_keras_hub_over_tfattn']:.2f}x | >= {c['target']}x "
            f"| {'yes' if c['meets_target'] else 'NO'} "
            f"| {r['tfattn']['peak_rss_delta_mib']:.0f} / {r['keras']['peak_rss_delta_mib']:.0f} "
            f"/ {r['keras_hub']['peak_rss_delta_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny grid, 2 runs (smoke test)")
    parser.add_argument("--out", default="benchmarks/results/attention.json")
    parser.add_argument("--lengths", type=int, nargs="+", help="override the sequence lengths")
    parser.add_argument("--min-runs", type=int, help="override the minimum number of timed runs")
    parser.add_argument("--max-runs", type=int, help="override the maximum number of timed runs")
    parser.add_argument("--budget-s", type=float, help="timed seconds per layer per cell")
    args = parser.parse_args(argv)
    if args.quick and args.lengths:
        parser.error("--lengths picks lengths of the full grid; it does not combine with --quick")
    settings = dict(QUICK if args.quick else FULL)
    for key in ("min_runs", "max_runs", "budget_s"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    settings["max_runs"] = max(settings["max_runs"], settings["min_runs"])
    if args.lengths:
        settings["lengths"] = tuple(args.lengths)
    cells = settings.pop("cells", None) or [
        (length, batch_size(length), scores, dropout, xla)
        for length in settings["lengths"]
        for xla in settings["xla"]
        for dropout in settings["dropout"]
        for scores in settings["scores"]
    ]

    info = {
        "benchmark": "attention",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            "tfattn": tfattn.__version__,
        },
        "settings": {
            "min_runs": settings["min_runs"],
            "max_runs": settings["max_runs"],
            "budget_s": settings["budget_s"],
            "cells": len(cells),
            "grid": {k: settings[k] for k in ("lengths", "scores", "dropout", "xla") if k in settings},
            "batch_by_length": {str(c[0]): c[1] for c in cells},
            "quick": args.quick,
            "hidden_dim": HIDDEN,
            "num_heads": NUM_HEADS,
            "key_dim": KEY_DIM,
            "backend": keras.backend.backend(),
            "workload": "forward+backward of sum(out**2) wrt weights and input, training=True, "
            "inside tf.function(jit_compile=xla); median over timed runs after a warm-up "
            "(compile) call; runs interleaved across layers",
            "memory": MEMORY_METHOD,
            "keras_hub_layer": _class_name(make_layers(0.0, (1, 4, HIDDEN))["keras_hub"]),
            "tfattn_use_fused": None,
        },
        "results": [],
    }
    t_start = time.perf_counter()
    for i, (length, batch, scores, dropout, xla) in enumerate(cells):
        t0 = time.perf_counter()
        cell = run_cell(length, batch, scores, dropout, xla, settings)
        info["results"].append(cell)
        print(
            f"[{i + 1}/{len(cells)}] length={length} batch={batch} scores={scores} dropout={dropout} "
            f"xla={xla}: " + ", ".join(f"{n} {cell['impls'][n]['ms_median']:.1f} ms" for n in IMPLS)
            + f" ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        keras.backend.clear_session()
    info["machine"]["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["total_s"] = round(time.perf_counter() - t_start, 1)

    print()
    print(markdown_table(info["results"]))
    print(
        f"\nTF {tf.__version__}, Keras {keras.__version__}, keras-hub {keras_hub.__version__}; "
        f"{info['machine']['cpu_model']} x{info['machine']['cpu_count']}; "
        f"{info['total_s']:.0f} s total. Ratios > 1: tfattn faster. keras-hub's encoder uses "
        f"{info['settings']['keras_hub_layer']} (a control for noise). Memory: {MEMORY_METHOD}."
    )
    if os.path.dirname(args.out):
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {args.out}")
    return info


if __name__ == "__main__":
    main()
