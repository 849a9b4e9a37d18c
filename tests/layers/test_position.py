"""Position layers: golden values, invariants (RoPE relative positions, resizing), contract, errors."""

import keras
import numpy as np
import pytest
from keras import ops

from tests.contract import check_layer_contract
from tfattn.layers.position import (
    PositionEmbedding,
    RotaryEmbedding,
    SinePositionEncoding,
    SinePositionEncoding2D,
)

RNG = np.random.default_rng(0)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def _normal(*shape):
    return RNG.normal(size=shape).astype("float32")


def _resize_bilinear(grid, new_h, new_w):
    """float64 bilinear resize of (h, w, d), half-pixel centres, edges clamped (no antialias)."""
    grid = np.asarray(grid, np.float64)

    def taps(old, new):
        src = np.clip((np.arange(new) + 0.5) * old / new - 0.5, 0, old - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, old - 1)
        return lo, hi, src - lo

    r0, r1, fr = taps(grid.shape[0], new_h)
    c0, c1, fc = taps(grid.shape[1], new_w)
    rows = grid[r0] * (1 - fr)[:, None, None] + grid[r1] * fr[:, None, None]
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


# ----------------------------------------------------------------------------- SinePositionEncoding


def test_sine_golden_values():
    # pos = np.arange(3) + 2.0; d = 6
    # w = 10000.0 ** (-2 * (np.arange(d) // 2) / d); ang = pos[:, None] * w
    # np.where(np.arange(d) % 2 == 0, np.sin(ang), np.cos(ang))
    expected = np.array(
        [
            [0.9092974268, -0.4161468365, 0.0926985008, 0.9956942241, 0.004308856, 0.9999907168],
            [0.1411200081, -0.9899924966, 0.1387981011, 0.9903206991, 0.0064632591, 0.9999791129],
            [-0.7568024953, -0.6536436209, 0.1845987236, 0.9828139759, 0.0086176321, 0.9999628675],
        ]
    )
    out = _np(SinePositionEncoding()(np.zeros((2, 3, 6), "float32"), start_index=2))
    assert out.shape == (2, 3, 6)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_array_equal(out[0], out[1])


def test_sine_matches_keras_hub():
    import keras_hub

    x = _normal(2, 7, 10)
    ours = SinePositionEncoding(max_wavelength=100)(x, start_index=3)
    theirs = keras_hub.layers.SinePositionEncoding(max_wavelength=100)(x, start_index=3)
    np.testing.assert_allclose(_np(ours), _np(theirs), atol=1e-6)


def test_sine_incremental_equals_full():
    x = _normal(1, 6, 8)
    layer = SinePositionEncoding()
    full = _np(layer(x))
    for i in range(6):
        step = layer(x[:, i : i + 1], start_index=ops.convert_to_tensor(i, "int32"))
        np.testing.assert_allclose(_np(step), full[:, i : i + 1], atol=1e-6)


def test_sine_independent_of_batch_size():
    layer = SinePositionEncoding()
    one = _np(layer(np.zeros((1, 4, 8), "float32")))
    three = _np(layer(np.ones((3, 4, 8), "float32")))
    for b in range(3):
        np.testing.assert_array_equal(three[b], one[0])


# The sine encodings have no weights and ignore the input's values, so nothing upstream
# gets a gradient through them: the contract's fit check cannot apply (test_sine_trains_in_fit
# checks their intended use, x + encoding(x), under fit's compiled step instead).
@pytest.mark.parametrize("call_kwargs", [{}, {"start_index": 3}])
def test_sine_contract(call_kwargs):
    check_layer_contract(
        SinePositionEncoding,
        {"max_wavelength": 1000},
        _normal(2, 5, 8),
        call_kwargs=call_kwargs,
        expected_output_shape=(2, 5, 8),
        run_fit=False,
    )


@pytest.mark.parametrize(
    "layer_cls, shape", [(SinePositionEncoding, (2, 5, 8)), (SinePositionEncoding2D, (2, 2, 3, 8))]
)
def test_sine_trains_in_fit(layer_cls, shape):
    inputs = keras.Input(shape[1:])
    dense = keras.layers.Dense(shape[-1])
    hidden = dense(inputs)
    model = keras.Model(inputs, hidden + layer_cls()(hidden))
    x, y = _normal(*shape), _normal(*shape)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    loss0 = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=3, batch_size=2, verbose=0)
    assert model.evaluate(x, y, verbose=0) < loss0
    encoding = _np(layer_cls()(x))
    np.testing.assert_allclose(_np(model(x)) - _np(dense(x)), encoding, atol=1e-5)


def test_sine_errors():
    with pytest.raises(ValueError, match="max_wavelength"):
        SinePositionEncoding(max_wavelength=0)
    with pytest.raises(ValueError, match=r"\(batch, seq, hidden_dim\)"):
        SinePositionEncoding()(np.zeros((4, 8), "float32"))


# --------------------------------------------------------------------------- SinePositionEncoding2D


def test_sine_2d_golden_values():
    # def sine(p, d):  # 1-D table, interleaved sin/cos
    #     w = 10000.0 ** (-2 * (np.arange(d) // 2) / d); a = p[:, None] * w
    #     return np.where(np.arange(d) % 2 == 0, np.sin(a), np.cos(a))
    # np.concatenate([sine(np.array([1.0]), 4), sine(np.array([2.0]), 4)], -1)  # row 1, column 2
    expected = np.array(
        [0.8414709848, 0.5403023059, 0.0099998333, 0.9999500004,
         0.9092974268, -0.4161468365, 0.0199986667, 0.9998000067]
    )  # fmt: skip
    out = _np(SinePositionEncoding2D()(np.zeros((2, 2, 3, 8), "float32")))
    assert out.shape == (2, 2, 3, 8)
    np.testing.assert_allclose(out[1, 1, 2], expected, atol=1e-6)


def test_sine_2d_halves_are_row_and_column_encodings():
    out = _np(SinePositionEncoding2D(max_wavelength=50)(np.zeros((1, 3, 4, 8), "float32")))[0]
    rows = _np(SinePositionEncoding(max_wavelength=50)(np.zeros((1, 3, 4), "float32")))[0]
    cols = _np(SinePositionEncoding(max_wavelength=50)(np.zeros((1, 4, 4), "float32")))[0]
    np.testing.assert_allclose(out[..., :4], np.broadcast_to(rows[:, None], (3, 4, 4)), atol=1e-6)
    np.testing.assert_allclose(out[..., 4:], np.broadcast_to(cols[None], (3, 4, 4)), atol=1e-6)


def test_sine_2d_independent_of_batch_size():
    layer = SinePositionEncoding2D()
    one = _np(layer(np.zeros((1, 2, 3, 4), "float32")))
    three = _np(layer(np.zeros((3, 2, 3, 4), "float32")))
    for b in range(3):
        np.testing.assert_array_equal(three[b], one[0])


def test_sine_2d_contract():
    check_layer_contract(
        SinePositionEncoding2D,
        {},
        _normal(2, 2, 3, 8),
        expected_output_shape=(2, 2, 3, 8),
        run_fit=False,
    )


def test_sine_2d_errors():
    with pytest.raises(ValueError, match="divisible by 4"):
        SinePositionEncoding2D()(np.zeros((1, 2, 2, 6), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, height, width, hidden_dim\)"):
        SinePositionEncoding2D()(np.zeros((1, 4, 8), "float32"))
    with pytest.raises(ValueError, match="max_wavelength"):
        SinePositionEncoding2D(max_wavelength="big")


# -------------------------------------------------------------------------------- PositionEmbedding


def _built(dim=3, **kwargs):
    layer = PositionEmbedding(**kwargs)
    layer.build((None, layer.num_prefix_tokens + layer.num_positions, dim))
    return layer


def test_position_embedding_returns_the_weights_unchanged():
    layer = PositionEmbedding(grid_size=(2, 3), num_prefix_tokens=1)
    out = _np(layer(np.zeros((2, 7, 4), "float32")))
    weights = _np(layer.embeddings)
    assert weights.shape == (7, 4)
    np.testing.assert_array_equal(out[0], weights)
    np.testing.assert_array_equal(out[1], weights)


def test_position_embedding_identity_interpolation_is_exact():
    seq = _built(sequence_length=5, num_prefix_tokens=2)
    np.testing.assert_array_equal(_np(seq.interpolate(new_length=5)), _np(seq.embeddings))
    grid = _built(grid_size=(3, 4), num_prefix_tokens=1)
    np.testing.assert_array_equal(_np(grid.interpolate(new_grid_size=(3, 4))), _np(grid.embeddings))
    # Passing the trained grid explicitly at call time is the identity too.
    out = grid(np.zeros((1, 13, 3), "float32"), grid_size=(3, 4))
    np.testing.assert_array_equal(_np(out)[0], _np(grid.embeddings))


def test_position_embedding_1d_linear_golden_values():
    layer = _built(dim=1, sequence_length=4, num_prefix_tokens=1)
    layer.set_weights([np.array([[9.0], [0.0], [1.0], [2.0], [3.0]], "float32")])
    # Half-pixel linear resize 4 -> 8, edges clamped (see _resize_bilinear):
    # src = np.clip((np.arange(8) + 0.5) * 4 / 8 - 0.5, 0, 3) on values [0, 1, 2, 3] = src
    expected = [9.0, 0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]
    np.testing.assert_allclose(_np(layer.interpolate(new_length=8))[:, 0], expected, atol=1e-6)


@pytest.mark.parametrize("old, new", [((3, 2), (5, 4)), ((4, 4), (2, 3)), ((2, 2), (2, 5))])
def test_position_embedding_grid_matches_numpy_bilinear(old, new):
    layer = _built(dim=3, grid_size=old, num_prefix_tokens=2)
    weights = _np(layer.embeddings)
    out = _np(layer.interpolate(new_grid_size=new))
    assert out.shape == (2 + new[0] * new[1], 3)
    np.testing.assert_array_equal(out[:2], weights[:2])  # prefix tokens are never resized
    expected = _resize_bilinear(weights[2:].reshape(*old, 3), *new).reshape(-1, 3)
    np.testing.assert_allclose(out[2:], expected, atol=1e-5)


def test_position_embedding_larger_grid_keeps_corners_and_mean():
    layer = _built(dim=4, grid_size=(3, 3), num_prefix_tokens=1)
    grid = _np(layer.embeddings)[1:].reshape(3, 3, 4)
    # Inferred from the square token count: 1 + 36 tokens -> a 6 x 6 grid.
    out = _np(layer(np.zeros((2, 37, 4), "float32")))[0, 1:].reshape(6, 6, 4)
    # Upsampling x2 with half-pixel centres clamps the corners onto the old corners...
    for r, c in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(out[r, c], grid[r, c], atol=1e-6)
    # ...and gives every old value total weight 4, so the mean is kept.
    np.testing.assert_allclose(out.mean((0, 1)), grid.mean((0, 1)), atol=1e-6)
    assert out.min() >= grid.min() - 1e-6 and out.max() <= grid.max() + 1e-6


def test_position_embedding_call_grid_size_argument():
    layer = _built(dim=2, grid_size=(2, 2), num_prefix_tokens=1)
    out = _np(layer(np.zeros((1, 1 + 12, 2), "float32"), grid_size=(3, 4)))
    np.testing.assert_allclose(out[0], _np(layer.interpolate(new_grid_size=(3, 4))), atol=0)


def test_position_embedding_grid_size_argument_with_unknown_token_count():
    # A functional model with an unknown static token count (as a retraced tf.function
    # with relaxed shapes sees it) still resizes to the grid given at call time.
    layer = _built(dim=2, grid_size=(2, 2), num_prefix_tokens=1)
    tokens = keras.Input((None, 2))
    model = keras.Model(tokens, layer(tokens, grid_size=(3, 4)))
    out = _np(model(np.zeros((2, 1 + 12, 2), "float32")))
    np.testing.assert_allclose(out[1], _np(layer.interpolate(new_grid_size=(3, 4))), atol=0)
    with pytest.raises(ValueError, match="grid_size=\\(3, 4\\)"):
        layer(np.zeros((1, 1 + 9, 2), "float32"), grid_size=(3, 4))


def test_position_embedding_independent_of_batch_size():
    layer = _built(dim=3, grid_size=(2, 2), num_prefix_tokens=1)
    one = _np(layer(np.zeros((1, 10, 3), "float32")))
    four = _np(layer(np.zeros((4, 10, 3), "float32")))
    for b in range(4):
        np.testing.assert_array_equal(four[b], one[0])


@pytest.mark.parametrize(
    "init_kwargs, shape, call_kwargs",
    [
        ({"sequence_length": 6}, (2, 6, 4), {}),
        ({"sequence_length": 8, "num_prefix_tokens": 1}, (2, 6, 4), {}),  # first 6 rows
        ({"grid_size": (2, 3), "num_prefix_tokens": 1}, (2, 7, 4), {}),
        ({"grid_size": 2, "num_prefix_tokens": 1}, (2, 10, 4), {}),  # inferred 3 x 3
        ({"grid_size": [2, 2], "initializer": "zeros"}, (2, 12, 4), {"grid_size": (3, 4)}),
    ],
)
def test_position_embedding_contract(init_kwargs, shape, call_kwargs):
    check_layer_contract(
        PositionEmbedding,
        init_kwargs,
        _normal(*shape),
        call_kwargs=call_kwargs,
        expected_output_shape=shape,
    )


def test_position_embedding_errors():
    with pytest.raises(ValueError, match="exactly one of `sequence_length`"):
        PositionEmbedding()
    with pytest.raises(ValueError, match="exactly one of `sequence_length`"):
        PositionEmbedding(sequence_length=4, grid_size=(2, 2))
    with pytest.raises(ValueError, match="`sequence_length` must be a positive int"):
        PositionEmbedding(sequence_length=0)
    with pytest.raises(ValueError, match="`grid_size` must be an int or a pair"):
        PositionEmbedding(grid_size=(2, 2, 2))
    with pytest.raises(ValueError, match="`num_prefix_tokens` must be a non-negative int"):
        PositionEmbedding(sequence_length=4, num_prefix_tokens=-1)
    with pytest.raises(ValueError, match="needs a built layer"):
        PositionEmbedding(sequence_length=4).interpolate(new_length=2)
    with pytest.raises(ValueError, match=r"\(batch, tokens, hidden_dim\)"):
        PositionEmbedding(sequence_length=4)(np.zeros((4, 3), "float32"))

    grid = _built(grid_size=(2, 3), num_prefix_tokens=1)
    with pytest.raises(ValueError, match="cannot infer the grid of an input with 17 tokens"):
        grid(np.zeros((1, 17, 3), "float32"))  # 16 is square, but the stored grid is not
    with pytest.raises(ValueError, match="gives 6 positions, but the input has 10 tokens"):
        grid(np.zeros((1, 10, 3), "float32"), grid_size=(2, 3))
    with pytest.raises(ValueError, match="pass `new_grid_size`"):
        grid.interpolate(new_length=4)
    square = _built(grid_size=(2, 2))
    with pytest.raises(ValueError, match="cannot infer the grid of an input with 5 tokens"):
        square(np.zeros((1, 5, 3), "float32"))

    seq = _built(sequence_length=4, num_prefix_tokens=2)
    with pytest.raises(ValueError, match="holds 6 \\(2 prefix \\+ sequence_length=4\\)"):
        seq(np.zeros((1, 7, 3), "float32"))
    with pytest.raises(ValueError, match="only for grid embeddings"):
        seq(np.zeros((1, 6, 3), "float32"), grid_size=(2, 2))
    with pytest.raises(ValueError, match="pass `new_length`"):
        seq.interpolate(new_grid_size=(2, 2))


# ---------------------------------------------------------------------------------- RotaryEmbedding


def _rope_numpy(x, start_index=0, max_wavelength=10000.0, scaling_factor=1.0):
    """float64 RoPE as a 2x2 rotation of each (i, i + d/2) pair; x: (b, seq, heads, d)."""
    x = np.asarray(x, np.float64)
    half = x.shape[-1] // 2
    pos = (np.arange(x.shape[1]) + start_index) / scaling_factor
    ang = pos[:, None] * max_wavelength ** (-2 * np.arange(half) / x.shape[-1])  # (seq, half)
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


def test_rope_golden_values():
    # x = np.linspace(-1.0, 1.0, 24).reshape(1, 3, 2, 4)
    # _rope_numpy(x, start_index=1, max_wavelength=100.0, scaling_factor=2.0), i.e.
    # ang = (np.arange(3) + 1.0)[:, None] / 2 * 100.0 ** (-2 * np.arange(2) / 4)
    # [x1 * cos - x2 * sin, x2 * cos + x1 * sin] for x1, x2 = x[..., :2], x[..., 2:]
    x = np.linspace(-1.0, 1.0, 24).reshape(1, 3, 2, 4).astype("float32")
    out = _np(RotaryEmbedding(max_wavelength=100, scaling_factor=2.0)(x, start_index=1))
    np.testing.assert_allclose(
        out[0, 0, 0], [-0.4815353778, -0.8749612866, -1.2043850463, -0.7838398688], atol=1e-6
    )
    np.testing.assert_allclose(
        out[0, 2, 1], [-0.8584722735, 0.667372758, 0.8018650438, 1.11221997], atol=1e-6
    )
    np.testing.assert_allclose(out, _rope_numpy(x, 1, 100.0, 2.0), atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 5, 3, 8), (2, 5, 8)])
def test_rope_matches_numpy_and_keras_hub(shape):
    import keras_hub

    x = _normal(*shape)
    out = _np(RotaryEmbedding()(x, start_index=2))
    ref = _rope_numpy(x.reshape(shape[:2] + (-1, shape[-1])), start_index=2).reshape(shape)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(
        out, _np(keras_hub.layers.RotaryEmbedding()(x, start_index=2)), atol=1e-5
    )


def test_rope_scores_depend_only_on_relative_position():
    seq, dim = 7, 8
    q, k = _normal(dim), _normal(dim)
    # Row m of rope(tile(q)) is rope(q, m): scores[m, n] = <rope(q, m), rope(k, n)>.
    layer = RotaryEmbedding(max_wavelength=50)
    rq = _np(layer(np.tile(q, (1, seq, 1)))).astype(np.float64)[0]
    rk = _np(layer(np.tile(k, (1, seq, 1)))).astype(np.float64)[0]
    scores = rq @ rk.T
    for m in range(1, seq):
        for n in range(1, seq):
            assert scores[m, n] == pytest.approx(scores[m - 1, n - 1], abs=1e-5), (m, n)
    # ...while not being trivially constant: they change with the offset.
    assert abs(scores[0, 0] - scores[0, 3]) > 1e-3
    np.testing.assert_allclose(scores[0, 0], q @ k, atol=1e-5)  # position 0 is not rotated


def test_rope_incremental_equals_full_and_keeps_norms():
    x = _normal(2, 6, 2, 4)
    layer = RotaryEmbedding()
    full = _np(layer(x))
    for i in range(6):
        step = layer(x[:, i : i + 1], start_index=ops.convert_to_tensor(i, "int32"))
        np.testing.assert_allclose(_np(step), full[:, i : i + 1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(full, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize(
    "shape, call_kwargs",
    [((2, 5, 2, 4), {}), ((2, 5, 6), {"start_index": 4})],
)
def test_rope_contract(shape, call_kwargs):
    check_layer_contract(
        RotaryEmbedding,
        {"max_wavelength": 500, "scaling_factor": 2.0},
        _normal(*shape),
        call_kwargs=call_kwargs,
        expected_output_shape=shape,
    )


def test_rope_errors():
    with pytest.raises(ValueError, match="even `head_dim`"):
        RotaryEmbedding()(np.zeros((1, 3, 2, 5), "float32"))
    with pytest.raises(ValueError, match=r"\(batch, seq, num_heads, head_dim\)"):
        RotaryEmbedding()(np.zeros((3, 4), "float32"))
    with pytest.raises(ValueError, match="`scaling_factor` must be a positive number"):
        RotaryEmbedding(scaling_factor=0.0)
    with pytest.raises(ValueError, match="max_wavelength"):
        RotaryEmbedding(max_wavelength=-1)


def test_sequence_embedding_slices_shorter_inputs_and_rejects_longer():
    layer = _built(dim=3, sequence_length=6, num_prefix_tokens=1)
    full = _np(layer.embeddings)
    np.testing.assert_array_equal(_np(layer(np.zeros((2, 4, 3), "float32")))[0], full[:4])
    with pytest.raises(ValueError, match="build it with a larger `sequence_length`"):
        layer(np.zeros((2, 8, 3), "float32"))
