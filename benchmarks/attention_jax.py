"""Multi-head attention training-step speed on the JAX backend: tfattn vs Keras.

    KERAS_BACKEND=jax python benchmarks/attention_jax.py [--quick] [--lengths 64 197]
        [--runs 7] [--out PATH]

Times a jitted forward + backward (`jax.value_and_grad` of sum(out**2), gradients wrt the
weights and the input) of `keras.layers.MultiHeadAttention` and tfattn's
`MultiHeadAttention` with the same weights, interleaved run by run in one process so that
load from other processes hits them alike; hidden 192, 3 heads of 64, batch 32 (8 at
length 1024). The median of `--runs` timed steps after a compile + warm-up call.

Cells per length:
- `plain`: no dropout, no scores. tfattn twice: its default (`use_fused=None`) and the
  other kernel (`keras.ops.dot_product_attention` vs the explicit einsum + softmax), which
  is the measurement behind the `use_fused=None` default (fused only on a JAX GPU/TPU).
  Keras runs `ops.dot_product_attention` here.
- `scores`: `return_attention_scores=True` (the loss also sums the scores squared), which
  sends Keras down its explicit path.
- `dropout`: attention dropout 0.1 in training mode (Keras's explicit path too).
- `axes` (one cell, length L = 64 positions per row): 4-D input `(batch 8, 16 rows, L, 192)`
  with `attention_axes=(2,)`, axial attention along each row.

Target (tfattn issue 15): tfattn's default >= 1.0x Keras in every cell. The results JSON
records the CPU model and the device; run on a GPU machine with a carried Keras wheel.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import load_average, machine_info  # noqa: E402
from tfattn.layers import MultiHeadAttention  # noqa: E402
from tfattn.layers.functional import fused_by_default  # noqa: E402

HIDDEN, HEADS = 192, 3
DROPOUT = 0.1
CELLS = ("plain", "scores", "dropout", "axes")


def make_step(layer, scores, training):
    def loss_fn(trainable, non_trainable, x):
        out, non_trainable = layer.stateless_call(
            trainable, non_trainable, x, x, return_attention_scores=scores, training=training
        )
        if scores:
            y, weights = out
            return (y.astype("float32") ** 2).sum() + (weights.astype("float32") ** 2).sum()
        return (out.astype("float32") ** 2).sum()

    return jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 2)))


def time_interleaved(steps, runs):
    """Median ms per step; runs alternate between the layers so load changes hit all alike."""
    for step, args in steps.values():
        jax.block_until_ready(step(*args))  # compile + warm-up
    times = {name: [] for name in steps}
    for _ in range(runs):
        for name, (step, args) in steps.items():
            start = time.perf_counter()
            jax.block_until_ready(step(*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


def run_cell(length, cell, runs):
    """One row: {cell settings, ms per implementation, keras/tfattn ratio}."""
    batch = 8 if length >= 1024 or cell == "axes" else 32
    shape = (batch, 16, length, HIDDEN) if cell == "axes" else (batch, length, HIDDEN)
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    kwargs = {"dropout": DROPOUT} if cell == "dropout" else {}
    if cell == "axes":
        kwargs["attention_axes"] = (2,)
    reference = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS, seed=0, **kwargs)
    reference(x, x)
    layers = {"keras": reference}
    default = fused_by_default()
    variants = {"tfattn": None}
    if cell == "plain":  # the other kernel too: the `use_fused` decision
        variants[f"tfattn_{'explicit' if default else 'fused'}"] = not default
    for name, use_fused in variants.items():
        layer = MultiHeadAttention(HEADS, HIDDEN // HEADS, seed=0, use_fused=use_fused, **kwargs)
        layer(x, x)
        layer.set_weights(reference.get_weights())
        layers[name] = layer
    steps = {}
    for name, layer in layers.items():
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]
        steps[name] = (make_step(layer, cell == "scores", cell == "dropout"),
                       (trainable, non_trainable, x))
    timings = time_interleaved(steps, runs)
    row = {"cell": cell, "length": length, "batch": batch, "input_shape": list(shape),
           **{f"{k}_ms": round(v, 2) for k, v in timings.items()},
           "tfattn_default": "fused" if default else "explicit",
           "ratio_keras_over_tfattn": round(timings["keras"] / timings["tfattn"], 3)}
    row["meets_target"] = row["ratio_keras_over_tfattn"] >= 1.0
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="length 64 only, 3 runs, every cell (smoke test)")
    parser.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 64 197 1024)")
    parser.add_argument("--cells", default=",".join(CELLS), help=f"subset of {','.join(CELLS)}")
    parser.add_argument("--out", default="benchmarks/results/attention_jax.json")
    parser.add_argument("--runs", type=int, default=7, help="timed steps per layer and cell")
    args = parser.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - set(CELLS))
    if unknown:
        parser.error(f"--cells: unknown {unknown}; expected a subset of {list(CELLS)}")
    lengths = args.lengths or ([64] if args.quick else [64, 197, 1024])
    runs = 3 if args.quick else args.runs
    info = {"benchmark": "attention_jax", "date": datetime.date.today().isoformat(),
            "machine": machine_info(), "device": str(jax.devices()[0]),
            "versions": {"jax": jax.__version__, "keras": keras.__version__},
            "settings": {"hidden": HIDDEN, "heads": HEADS, "runs": runs, "dropout": DROPOUT,
                         "axes_input": "(batch, 16, length, hidden), attention_axes=(2,)"},
            "results": []}
    start = time.perf_counter()
    for length in lengths:
        for cell in cells:
            if cell == "axes" and length != lengths[0]:
                continue  # one axial cell, at the first length
            row = run_cell(length, cell, runs)
            info["results"].append(row)
            print(row, flush=True)
    info["machine"]["load_average_end"] = load_average()
    info["total_s"] = round(time.perf_counter() - start, 1)

    print("\n| cell | input | keras ms | tfattn ms | keras/tfattn | other kernel ms |")
    print("|---|---|---|---|---|---|")
    for r in info["results"]:
        other = next((f"{v} ({k[7:-3]})" for k, v in r.items()
                      if k.startswith("tfattn_") and k.endswith("_ms") and k != "tfattn_ms"), "")
        print(f"| {r['cell']} | {'x'.join(map(str, r['input_shape']))} | {r['keras_ms']} "
              f"| {r['tfattn_ms']} | {r['ratio_keras_over_tfattn']}x | {other} |")
    print(f"CPU: {info['machine']['cpu_model']}; device {info['device']}; "
          f"tfattn default kernel: {info['results'][0]['tfattn_default']}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
