"""Fused vs explicit attention on the JAX backend: does `use_fused` pay?

    KERAS_BACKEND=jax python benchmarks/attention_jax.py [--quick] [--out PATH]

Times a jitted forward+backward of tfattn `MultiHeadAttention` with `use_fused=True`
(`keras.ops.dot_product_attention`, cuDNN/flash-eligible on GPU) and `use_fused=False`
(explicit einsum + softmax), next to `keras.layers.MultiHeadAttention`, same weights,
hidden 192, 3 heads, no dropout, no returned scores. This is the measurement behind the
`use_fused=None` default (fused only on a JAX GPU/TPU). Runs on CPU here and on a GPU when
one is present.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from tfattn.layers import MultiHeadAttention  # noqa: E402
from tfattn.layers.functional import fused_by_default  # noqa: E402

HIDDEN, HEADS = 192, 3


def make_step(layer):
    def loss_fn(trainable, non_trainable, x):
        y, _ = layer.stateless_call(trainable, non_trainable, x, x)
        return (y.astype("float32") ** 2).sum()

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="length 64 only, 3 runs")
    parser.add_argument("--out", default="benchmarks/results/attention_jax.json")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    lengths = [64] if args.quick else [64, 197, 1024]
    runs = 3 if args.quick else args.runs
    device = str(jax.devices()[0])
    rows = []
    for length in lengths:
        batch = 8 if length >= 1024 else 32
        x = np.random.default_rng(0).normal(size=(batch, length, HIDDEN)).astype("float32")
        reference = keras.layers.MultiHeadAttention(HEADS, HIDDEN // HEADS)
        reference(x, x)
        layers = {"keras": reference}
        for fused in (True, False):
            layer = MultiHeadAttention(HEADS, HIDDEN // HEADS, use_fused=fused)
            layer(x, x)
            layer.set_weights(reference.get_weights())
            layers[f"tfattn_fused={fused}"] = layer
        steps = {}
        for name, layer in layers.items():
            trainable = [v.value for v in layer.trainable_variables]
            non_trainable = [v.value for v in layer.non_trainable_variables]
            steps[name] = (make_step(layer), (trainable, non_trainable, x))
        timings = time_interleaved(steps, runs)
        row = {
            "length": length,
            "batch": batch,
            **{f"{k}_ms": round(v, 2) for k, v in timings.items()},
            "explicit_over_fused": round(timings["tfattn_fused=False"] / timings["tfattn_fused=True"], 3),
            "tfattn_default": "fused" if fused_by_default() else "explicit",
            "keras_over_tfattn_default": round(timings["keras"] / timings[f"tfattn_fused={fused_by_default()}"], 3),
        }
        rows.append(row)
        print(row, flush=True)

    print("\n| length | batch | tfattn fused ms | tfattn explicit ms | keras ms | explicit/fused | keras/tfattn default |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['length']} | {r['batch']} | {r['tfattn_fused=True_ms']} | {r['tfattn_fused=False_ms']} "
            f"| {r['keras_ms']} | {r['explicit_over_fused']}x | {r['keras_over_tfattn_default']}x ({r['tfattn_default']}) |"
        )
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "device": device},
        "versions": {"jax": jax.__version__, "keras": keras.__version__},
        "settings": {"hidden": HIDDEN, "heads": HEADS, "runs": runs, "dropout": 0.0, "scores": False},
        "results": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
