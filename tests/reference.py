"""Independent NumPy float64 references for the attention numerics tests."""

import numpy as np
from keras import ops
from scipy.special import erf


def softmax(x, axis=-1):
    x = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def attention(q, k, v, mask=None, score="scaled_dot", scale=None, bias=None, additive_weight=None):
    """q (b, tq, h, d), k (b, tk, h, d), v (b, tk, h, dv) -> out (b, tq, h, dv), w (b, h, tq, tk).

    Loops written for clarity, not speed: mask True = attend; fully masked rows -> 0.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, tq, h, d = q.shape
    tk = k.shape[1]
    logits = np.zeros((b, h, tq, tk))
    for bi in range(b):
        for hi in range(h):
            for i in range(tq):
                for j in range(tk):
                    qi, kj = q[bi, i, hi], k[bi, j, hi]
                    if score == "scaled_dot":
                        s = qi @ kj / np.sqrt(d) if scale is None else qi @ kj * scale
                    elif score == "dot":
                        s = qi @ kj
                    elif score == "cosine":
                        s = qi @ kj / (np.linalg.norm(qi) * np.linalg.norm(kj))
                        t = 1.0 if scale is None else np.broadcast_to(scale, (b, h, tq, tk))[bi, hi, i, j]
                        s = s * t
                    elif score == "additive":
                        s = np.asarray(additive_weight, np.float64)[hi] @ np.tanh(qi + kj)
                    else:
                        raise ValueError(score)
                    logits[bi, hi, i, j] = s
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
    if mask is not None:
        m = np.asarray(mask, bool)
        if m.ndim == 2:
            m = m[None, None]
        elif m.ndim == 3:
            m = m[:, None]
        m = np.broadcast_to(m, logits.shape)
        w = softmax(np.where(m, logits, -np.inf))
        w = np.where(m, np.nan_to_num(w), 0.0)
    else:
        w = softmax(logits)
    out = np.einsum("bhqk,bkhd->bqhd", w, v)
    return out, w


# --- layer references computed from a layer's own weights -------------------------------


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)



def ref_layer_norm(norm, x):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + norm.epsilon) * _np(norm.gamma) + _np(norm.beta)


def ref_mlp(mlp, x):
    h = x @ _np(mlp.fc1.kernel) + _np(mlp.fc1.bias)
    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU
    return h @ _np(mlp.fc2.kernel) + _np(mlp.fc2.bias)


def ref_mha(mha, query, value, mask=None):
    """`tfattn.layers.MultiHeadAttention` in float64; mask (batch, Tq, Tk) -> (out, weights)."""
    q = np.einsum("btd,dhk->bthk", query, _np(mha.query_dense.kernel)) + _np(mha.query_dense.bias)
    k = np.einsum("btd,dhk->bthk", value, _np(mha.key_dense.kernel)) + _np(mha.key_dense.bias)
    v = np.einsum("btd,dhk->bthk", value, _np(mha.value_dense.kernel)) + _np(mha.value_dense.bias)
    with np.errstate(invalid="ignore"):  # fully masked rows: the reference maps NaN to 0
        out, w = attention(q, k, v, mask)
    out = np.einsum("bthk,hko->bto", out, _np(mha.output_dense.kernel)) + _np(mha.output_dense.bias)
    return out, w
