"""Detection models: output contract of both heads on both backbones, the DETR head's
anchors and query positions against independent references, serialisation, training
through `fit` (eager graph and XLA), `detect` and attention maps."""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import qmc

from apps.detection import box_ops
from apps.detection import model as det
from apps.detection.postprocess import decode_boxes, dense_points
from tfattn.layers import SinePositionEncoding2D

S, K = 64, 3
TINY = {
    "dense": dict(hidden_dim=32, num_convs=1, attention_reduction=4, attention_kernel_size=3),
    "detr": dict(hidden_dim=32, num_heads=2, intermediate_dim=64, dropout_rate=0.0,
                 num_queries=8, num_encoder_layers=1, num_decoder_layers=2),
}
TINY_BACKBONE = {
    "cnn": dict(backbone_widths=(8, 16, 32, 64)),
    "vit": dict(num_backbone_layers=1, num_heads=2, intermediate_dim=64),
}


def _build(head, backbone="cnn", seed=0, **overrides):
    keras.utils.set_random_seed(seed)
    return det.build_detector(head, backbone, K, S,
                              **{**TINY_BACKBONE[backbone], **TINY[head], **overrides})


def _scenes(n, seed=0, max_boxes=4):
    """Images with bright rectangles on noise, and their boxes (two or three per image;
    the last image has none, as real data can)."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 60, (n, S, S, 3)).astype("float32")
    boxes = np.zeros((n, max_boxes, 4), "float32")
    labels = np.full((n, max_boxes), -1, "int32")
    for i in range(n - 1):
        for j in range(2 + i % 2):
            x0, y0 = rng.uniform(0.0, 0.6, 2)
            w, h = rng.uniform(0.2, 0.4, 2)
            boxes[i, j] = [x0, y0, x0 + w, y0 + h]
            labels[i, j] = rng.integers(K)
            c0, r0, c1, r1 = (np.array([x0, y0, x0 + w, y0 + h]) * S).astype(int)
            images[i, r0:r1, c0:c1, labels[i, j]] = 250.0
    return images, {"boxes": boxes, "labels": labels}


@pytest.mark.parametrize("backbone", det.BACKBONES)
@pytest.mark.parametrize("head", det.HEADS)
def test_outputs_follow_the_contract(head, backbone):
    model = _build(head, backbone, prior_probability=0.01)
    images, _ = _scenes(3)
    out = model(images)
    assert all(v.dtype == "float32" for v in out.values())
    if head == "dense":
        points, _ = dense_points(S, det.STRIDES)
        n = sum((S // s) ** 2 for s in det.STRIDES)
        assert points.shape[0] == n
        assert set(out) == {"class_logits", "box_deltas", "centerness"}
        assert out["class_logits"].shape == (3, n, K)
        assert out["box_deltas"].shape == (3, n, 4)
        assert out["centerness"].shape == (3, n)
        # Prior-probability init: class probabilities start near 0.01.
        p = keras.ops.sigmoid(out["class_logits"]).numpy()
        assert 0.005 < p.mean() < 0.02, p.mean()
    else:
        q, layers = TINY["detr"]["num_queries"], TINY["detr"]["num_decoder_layers"]
        assert set(out) == {"logits", "boxes", "aux_logits", "aux_boxes"}
        assert out["logits"].shape == (3, q, K + 1)
        assert out["boxes"].shape == (3, q, 4)
        assert out["aux_logits"].shape == (layers - 1, 3, q, K + 1)
        assert out["aux_boxes"].shape == (layers - 1, 3, q, 4)
        boxes = out["boxes"].numpy()
        assert np.all((boxes > 0) & (boxes < 1))
        # Untrained, every query predicts its anchor (zero-initialised box output).
        anchors = det.anchor_boxes(q)
        np.testing.assert_allclose(boxes, np.broadcast_to(anchors, boxes.shape), atol=1e-5)
        np.testing.assert_allclose(out["aux_boxes"][0], boxes, atol=1e-5)
        # Prior init: no-object is the most likely class of every query.
        assert np.all(out["logits"].numpy().argmax(-1) == K)


def test_single_layer_detr_has_no_aux_outputs():
    out = _build("detr", num_decoder_layers=1)(_scenes(2)[0])
    assert set(out) == {"logits", "boxes"}


@pytest.mark.parametrize("head", det.HEADS)
def test_outputs_do_not_depend_on_the_batch(head):
    model = _build(head, "vit" if head == "detr" else "cnn")
    images, _ = _scenes(3)
    batched = model(images, training=False)
    single = model(images[1:2], training=False)
    for key in single:
        axis = 1 if key.startswith("aux_") else 0
        np.testing.assert_allclose(np.take(batched[key], [1], axis=axis), single[key],
                                   atol=2e-5, err_msg=key)
    empty = model(images[:0], training=False)  # multi-worker evaluation can send these
    for key in empty:
        assert empty[key].shape[1 if key.startswith("aux_") else 0] == 0


def test_anchors_are_the_halton_sequence():
    anchors = det.anchor_boxes(12, size=0.2)
    # scipy's unscrambled Halton sequence starts at index 0 (the origin): skip it.
    reference = qmc.Halton(d=2, scramble=False).random(13)[1:]
    np.testing.assert_allclose(anchors[:, :2], 0.05 + 0.9 * reference, atol=1e-6)
    np.testing.assert_allclose(anchors[:, 2:], 0.2)


def test_query_position_sine_matches_the_memory_encoding():
    # A box centred on memory cell (i, j) gets the (y, x) code SinePositionEncoding2D gives
    # that cell, so content-free attention can align queries with memory positions.
    h, w, dim = 4, 6, 16
    memory_code = SinePositionEncoding2D()(np.zeros((1, h, w, dim), "float32")).numpy()[0]
    cells = [(0, 0), (1, 4), (3, 5)]
    boxes = np.array([[[(j + 0.5) / w, (i + 0.5) / h, 0.25, 0.5] for i, j in cells]],
                     "float32")
    emb = det.box_sine_embedding(boxes, (h, w), dim).numpy()[0]
    assert emb.shape == (len(cells), 2 * dim)
    for k, (i, j) in enumerate(cells):
        np.testing.assert_allclose(emb[k, :dim], memory_code[i, j], atol=1e-5)
    # Width and height in cell units: w * 6 = 1.5 columns; channel 0 is sin(h * 4 = 2).
    np.testing.assert_allclose(emb[:, dim + dim // 2], np.sin(0.25 * w), atol=1e-6)
    np.testing.assert_allclose(emb[:, dim], np.sin(0.5 * h), atol=1e-6)


@pytest.mark.parametrize("head", det.HEADS)
def test_config_round_trip_and_keras_file(head, tmp_path):
    model = _build(head, "cnn", seed=3)
    config = model.get_config()
    params = set(inspect.signature(det.Detector.__init__).parameters) - {"self", "kwargs"}
    assert set(config) - {"name", "trainable", "dtype"} == params
    assert det.Detector.from_config(config).get_config() == config
    assert keras.saving.get_registered_name(det.Detector) == "tfattn_apps>Detector"

    images, _ = _scenes(2)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert isinstance(restored, det.Detector) and restored.get_config() == config
    expected, got = model(images), restored(images)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("head", det.HEADS)
def test_fit_overfits_four_images_and_logs_loss_components(head):
    # The dense head trains under XLA (as apps/detection/train.py runs it); DETR's matcher
    # calls scipy, so it trains without.
    images, targets = _scenes(4)
    model = _build(head, "cnn", seed=1)
    model.compile(keras.optimizers.Adam(3e-3), jit_compile=head == "dense")
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)
    history = model.fit(ds.repeat(), epochs=20, steps_per_epoch=1, validation_data=ds,
                        validation_freq=20, verbose=0).history
    losses = np.asarray(history["loss"])
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.7 * losses[:3].mean(), losses

    names = ({"loss", "class_loss", "l1_loss", "giou_loss"} if head == "detr"
             else {"loss", "focal_loss", "giou_loss", "centerness_loss"})
    assert set(history) == names | {f"val_{name}" for name in names}
    result = model.evaluate(ds, verbose=0, return_dict=True)
    assert set(result) == names
    np.testing.assert_allclose(result["loss"], history["val_loss"][-1], rtol=1e-5)
    # evaluate() reports the head's loss of the inference-mode outputs.
    from apps.detection import losses

    outputs = model(images, training=False)
    direct = (losses.detr_loss(targets, outputs, K) if head == "detr"
              else losses.dense_loss(targets, outputs, S))
    for name in names:
        np.testing.assert_allclose(result[name], direct[name], rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("head", det.HEADS)
def test_detect_and_attention_maps(head):
    model = _build(head)
    images, _ = _scenes(2)
    fn = tf.function(lambda x: model.detect(x, max_detections=5, score_threshold=0.0))
    for result in (model.detect(images, max_detections=5), fn(tf.constant(images))):
        assert result["boxes"].shape == (2, 5, 4)
        assert result["scores"].shape == (2, 5) and result["classes"].shape == (2, 5)
        assert result["num_detections"].shape == (2,)
        assert result["classes"].dtype == tf.int32
    maps = model.attention_maps(images)
    if head == "detr":
        grid = S // det.DEFAULTS["detr"]["memory_stride"]
        assert maps.shape == (2, TINY["detr"]["num_queries"], grid, grid)
        # Softmax rows averaged over heads: each query's map sums to 1.
        np.testing.assert_allclose(np.sum(maps, axis=(2, 3)), 1.0, atol=1e-5)
    else:
        assert [tuple(m.shape) for m in maps] == [(2, S // s, S // s) for s in det.STRIDES]
        assert all(np.all((m >= 0) & (m <= 1)) for m in maps)


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match=r"no hyperparameter\(s\) \['num_queries'\]"):
        det.build_detector("dense", "cnn", K, S, num_queries=10)
    with pytest.raises(ValueError, match="`head` must be one of"):
        det.build_detector("yolo", "cnn", K, S)
    with pytest.raises(ValueError, match="`image_size` must be a positive multiple of 32"):
        det.Detector(K, image_size=100)
    with pytest.raises(ValueError, match="`images` must have shape"):
        _build("dense")(np.zeros((1, 32, 32, 3), "float32"))


def test_two_stage_queries_start_at_the_top_proposals():
    from apps.detection import losses

    model = _build("detr", two_stage=True, num_queries=20)  # 64 px / 16 = 16 tokens < 20
    images, targets = _scenes(2)
    out = model(images)
    assert out["enc_logits"].shape == (2, 16, K + 1) and out["enc_boxes"].shape == (2, 16, 4)
    head = model.detection_head
    # Layer 0's references: the 16 most object-like proposals, then 4 learned anchors.
    objectness = 1.0 - tf.nn.softmax(out["enc_logits"])[..., -1].numpy()
    order = np.argsort(-objectness, axis=1, kind="stable")
    expected = np.take_along_axis(out["enc_boxes"].numpy(), order[..., None], axis=1)
    anchors = tf.sigmoid(head.reference_logits).numpy()[16:]
    # The box output starts at zero, so an untrained layer 0 returns its references.
    first = out["aux_boxes"][0].numpy()
    np.testing.assert_allclose(np.sort(first[:, :16], axis=1), np.sort(expected, axis=1), atol=1e-5)
    np.testing.assert_allclose(first[:, 16:], np.broadcast_to(anchors, (2, 4, 4)), atol=1e-5)
    # Proposals start at their cells' anchors: centres on the 4x4 grid.
    np.testing.assert_allclose(np.sort(np.unique(np.round(out["enc_boxes"][0, :, 0], 4))),
                               (np.arange(4) + 0.5) / 4, atol=1e-4)
    # The set loss gains the proposals' term, and the config round-trips the flag.
    with_enc = losses.detr_loss(targets, out, K)["loss"]
    without = losses.detr_loss(targets, {k: v for k, v in out.items()
                                         if not k.startswith("enc_")}, K)["loss"]
    assert float(with_enc) > float(without)
    clone = det.Detector.from_config(model.get_config())
    assert clone.detection_head.two_stage and clone.hparams["two_stage"] is True


def test_denoising_queries_reconstruct_their_targets_and_leave_inference_alone():
    from apps.detection import losses

    groups = 3
    model = _build("detr", denoising_groups=groups, seed=2)
    head = model.detection_head
    images, targets = _scenes(3)  # 2, 3 and 0 boxes in slots of 4
    plain = model(images, training=False)
    assert not any(k.startswith("dn_") for k in plain)
    out = model((images, targets), training=True)
    layers, m = 2, targets["labels"].shape[1]
    assert out["dn_logits"].shape == (layers, 3, groups * m, K + 1)
    assert out["dn_boxes"].shape == (layers, 3, groups * m, 4)
    # Without noise an untrained layer 0 returns its reference (the box output starts at
    # zero): the target boxes themselves, in slot order, group after group.
    head.box_noise, head.label_noise = 0.0, 0.0
    clean = model((images, targets), training=True)
    real = targets["labels"] >= 0
    boxes = targets["boxes"]
    cxcywh = np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2,
                             boxes[..., 2:] - boxes[..., :2]], -1)
    first = clean["dn_boxes"][0].numpy().reshape(3, groups, m, 4)
    for g in range(groups):
        np.testing.assert_allclose(first[:, g][real], cxcywh[real], atol=1e-4)
    # Groups are decoded apart: every clean group's last layer equals a lone group's (one
    # sequence of all groups would let them attend to each other and differ).
    head.denoising_groups = 1
    alone = model((images, targets), training=True)["dn_logits"][-1].numpy()
    head.denoising_groups = groups
    last = clean["dn_logits"][-1].numpy().reshape(3, groups, m, K + 1)
    for g in range(groups):
        np.testing.assert_allclose(last[:, g][real], alone[real], atol=1e-4)
    # With noise, layer 0's references move by at most the noise bounds.
    head.box_noise = 0.4
    noisy = model((images, targets), training=True)["dn_boxes"][0].numpy().reshape(3, groups, m, 4)
    size = cxcywh[..., 2:]
    for g in range(groups):
        shift = np.abs(noisy[:, g, :, :2] - cxcywh[..., :2])[real]
        assert np.all(shift <= 0.2 * size[real] + 1e-4) and np.any(shift > 1e-3)
        ratio = noisy[:, g, :, 2:][real] / size[real]
        assert np.all((ratio >= 0.6 - 1e-3) & (ratio <= 1.4 + 1e-3))
    # The matching queries never see the denoising ones: their outputs are those of the
    # same training-mode pass without targets (BatchNorm uses the batch's statistics).
    np.testing.assert_allclose(clean["logits"], model(images, training=True)["logits"],
                               atol=1e-5)
    # The loss gains the denoising term; it needs the group count.
    with_dn = losses.detr_loss(targets, clean, K, denoising_groups=groups)["loss"]
    without = losses.detr_loss(targets, {k: v for k, v in clean.items()
                                         if not k.startswith("dn_")}, K)["loss"]
    assert float(with_dn) > float(without)
    with pytest.raises(ValueError, match="pass their `denoising_groups`"):
        losses.detr_loss(targets, clean, K)
    clone = det.Detector.from_config(model.get_config())
    assert clone.detection_head.denoising_groups == groups


def test_denoising_loss_is_zero_for_a_perfect_reconstruction():
    from apps.detection import losses

    _, targets = _scenes(3)
    groups = 2
    boxes = targets["boxes"]
    cxcywh = np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2,
                             boxes[..., 2:] - boxes[..., :2]], -1)
    dn_boxes = np.tile(cxcywh, (1, groups, 1))[None].astype("float32")  # (1, B, G*M, 4)
    labels = np.tile(np.maximum(targets["labels"], 0), (1, groups))
    dn_logits = (np.eye(K + 1)[labels] * 50.0)[None].astype("float32")
    got = losses._denoising_loss(targets, tf.constant(dn_logits), tf.constant(dn_boxes),
                                 groups, 1.0, 5.0, 2.0)
    assert float(got) == pytest.approx(0.0, abs=1e-5)
    # Padding slots do not count: garbage there changes nothing.
    dn_boxes[0][np.tile(targets["labels"], (1, groups)) < 0] = 0.5
    got = losses._denoising_loss(targets, tf.constant(dn_logits), tf.constant(dn_boxes),
                                 groups, 1.0, 5.0, 2.0)
    assert float(got) == pytest.approx(0.0, abs=1e-5)


def test_denoising_trains_through_fit():
    images, targets = _scenes(4)
    model = _build("detr", "cnn", seed=1, denoising_groups=2)
    model.compile(keras.optimizers.Adam(3e-3))
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)
    history = model.fit(ds.repeat(), epochs=12, steps_per_epoch=1, validation_data=ds,
                        validation_freq=12, verbose=0).history
    losses = np.asarray(history["loss"])
    assert np.all(np.isfinite(losses)) and losses[-3:].mean() < 0.8 * losses[:3].mean()
    # Validation runs the plain forward pass (no targets inside), as inference does.
    assert np.isfinite(history["val_loss"][-1])


def test_target_slots_are_trimmed_after_the_last_real_box_and_the_loss_is_unchanged():
    from apps.detection import losses

    labels = np.full((3, 6), -1, "int32")
    labels[0, [0, 2]] = [1, 2]  # a hole at slot 1 stays
    labels[1, 0] = 0
    boxes = np.random.default_rng(0).uniform(0.1, 0.4, (3, 6, 4)).astype("float32")
    boxes[..., 2:] += 0.5
    targets = {"boxes": tf.constant(boxes), "labels": tf.constant(labels)}
    trimmed = det.trim_target_slots(targets)
    assert trimmed["labels"].shape == (3, 3) and trimmed["boxes"].shape == (3, 3, 4)
    np.testing.assert_array_equal(trimmed["labels"], labels[:, :3])
    np.testing.assert_array_equal(trimmed["boxes"], boxes[:, :3])
    # No real box in the batch: one (padding) slot, never an empty target axis.
    empty = det.trim_target_slots({"boxes": tf.constant(boxes), "labels": tf.fill((3, 6), -1)})
    assert empty["labels"].shape == (3, 1)

    # The set loss ignores padding: trimmed targets (a dynamic slot count, as in the
    # training step) give the loss of the padded ones.
    rng = np.random.default_rng(1)
    outputs = {"logits": tf.constant(rng.normal(size=(3, 5, K + 1)).astype("float32")),
               "boxes": tf.constant(rng.uniform(0.2, 0.6, (3, 5, 4)).astype("float32"))}
    full = losses.detr_loss(targets, outputs, K)
    spec = {"boxes": tf.TensorSpec((3, None, 4)), "labels": tf.TensorSpec((3, None), tf.int32)}
    cut = tf.function(lambda t: losses.detr_loss(det.trim_target_slots(t), outputs, K),
                      input_signature=[spec])(targets)
    for name in ("loss", "class_loss", "l1_loss", "giou_loss"):
        np.testing.assert_allclose(float(cut[name]), float(full[name]), rtol=1e-5, err_msg=name)


def test_crop_classifier_learns_rescores_detections_and_round_trips(tmp_path):
    # The scenes' class is the painted channel: the crop classifier can learn it from the
    # box pixels alone. Training logs its loss and accuracy; detect() rescores with it
    # (eager and traced with an unknown batch); a batch without boxes costs nothing.
    images, targets = _scenes(4)
    model = _build("dense", seed=2, roi_crop_size=16)
    model.compile(keras.optimizers.Adam(3e-3))
    ds = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)
    history = model.fit(ds.repeat(), epochs=25, steps_per_epoch=1, verbose=0).history
    assert {"crop_loss", "crop_accuracy"} <= set(history)
    assert np.mean(history["crop_loss"][-3:]) < 0.5 * np.mean(history["crop_loss"][:3])
    empty = tf.data.Dataset.from_tensor_slices((images[3:], {k: v[3:] for k, v in
                                                              targets.items()})).batch(1)
    result = model.evaluate(empty, verbose=0, return_dict=True)
    assert result["crop_loss"] == 0.0 and np.isfinite(result["loss"])

    fn = tf.function(lambda x: model.detect(x, max_detections=10),
                     input_signature=[tf.TensorSpec((None, S, S, 3), tf.float32)])
    got, traced = model.detect(images, max_detections=10), fn(tf.constant(images))
    for key in got:
        np.testing.assert_allclose(traced[key], got[key], atol=1e-5, err_msg=key)
    # Each score is the head's score and the crop's class probability, weighted geometric
    # mean (weight w of the crop).
    from apps.detection import postprocess

    head = postprocess.postprocess_dense(model(images), S, det.STRIDES, 10)
    n = int(got["num_detections"][0])
    assert n > 0
    probs = keras.ops.softmax(model.classify_boxes(
        images, got["boxes"][0, :n], tf.zeros([n], tf.int32))).numpy()
    p = probs[np.arange(n), got["classes"][0, :n].numpy()]
    head_scores = {(tuple(np.round(b, 5)), int(c)): s for b, c, s in zip(
        head["boxes"][0].numpy(), head["classes"][0].numpy(), head["scores"][0].numpy())}
    old = np.array([head_scores[(tuple(np.round(b, 5)), int(c))] for b, c in zip(
        got["boxes"][0, :n].numpy(), got["classes"][0, :n].numpy())])
    w = model.hparams["roi_crop_weight"]
    np.testing.assert_allclose(got["scores"][0, :n], old ** (1 - w) * p ** w, rtol=1e-4)

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    again = restored.detect(images, max_detections=10)
    for key in got:
        np.testing.assert_allclose(again[key], got[key], atol=1e-5, err_msg=key)


def test_crop_classifier_widths_and_test_time_flip(tmp_path):
    # roi_crop_widths sizes the classifier; roi_crop_flip averages each crop's logits with
    # its mirror's: the same as classifying the mirrored box in the mirrored image, so the
    # flipped score is mirror-invariant; detect() uses it; both survive a .keras round trip.
    images, targets = _scenes(3)
    model = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16), roi_crop_flip=True)
    assert model.crop_classifier.widths == (8, 16)
    boxes = tf.constant([[0.1, 0.2, 0.5, 0.9], [0.3, 0.0, 1.0, 0.4]], tf.float32)
    index = tf.constant([0, 1], tf.int32)
    mirror_images = np.ascontiguousarray(images[:, :, ::-1])
    mirror_boxes = tf.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], -1)
    plain = model.classify_boxes(images, boxes, index).numpy()
    mirrored = model.classify_boxes(mirror_images, mirror_boxes, index).numpy()
    flipped = model.classify_boxes(images, boxes, index, flip=True).numpy()
    assert not np.allclose(plain, mirrored, atol=1e-3)  # the classifier is not symmetric
    np.testing.assert_allclose(flipped, 0.5 * (plain + mirrored), atol=1e-4)
    np.testing.assert_allclose(
        model.classify_boxes(mirror_images, mirror_boxes, index, flip=True), flipped, atol=1e-4)
    assert model.classify_boxes(images, boxes[:0], index[:0], flip=True).shape == (0, K)

    unflipped = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16))
    unflipped.set_weights(model.get_weights())
    got, without = model.detect(images, max_detections=10), unflipped.detect(images, max_detections=10)
    assert not np.allclose(got["scores"], without["scores"], atol=1e-4)
    n = int(got["num_detections"][0])
    probs = keras.ops.softmax(model.classify_boxes(
        images, got["boxes"][0, :n], tf.zeros([n], tf.int32), flip=True)).numpy()
    p = probs[np.arange(n), got["classes"][0, :n].numpy()]
    assert n > 0 and np.all(got["scores"][0, :n] <= p ** model.hparams["roi_crop_weight"] + 1e-5)

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.hparams["roi_crop_widths"] == (8, 16) and restored.hparams["roi_crop_flip"]
    again = restored.detect(images, max_detections=10)
    for key in got:
        np.testing.assert_allclose(again[key], got[key], atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="roi_crop_widths"):
        _build("dense", roi_crop_size=16, roi_crop_widths=(8, 0))


def test_crop_scales_average_the_logits_of_scaled_boxes(tmp_path):
    # roi_crop_scales averages each box's logits over the box scaled about its centre by
    # each factor (with roi_crop_flip: over every scale x flip view); detect() uses them,
    # `without_test_time_augmentation` turns them off, they survive a .keras round trip;
    # factors out of range, none, or a detector without a crop classifier are refused.
    images, _ = _scenes(3)
    model = _build("dense", seed=4, roi_crop_size=16, roi_crop_widths=(8, 16),
                   prior_probability=0.3)
    boxes = np.array([[0.1, 0.2, 0.5, 0.9], [0.3, 0.0, 1.0, 0.4]], np.float32)
    index = tf.constant([0, 2], tf.int32)
    # The box 1.2x its size about its centre, written out: (0.06, 0.13, 0.54, 0.97) ...
    grown = np.array([[0.06, 0.13, 0.54, 0.97], [0.23, -0.04, 1.07, 0.44]], np.float32)
    mirror_images = np.ascontiguousarray(images[:, :, ::-1])

    def mirror(b):
        return np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], -1)

    views = [model.classify_boxes(ims, bs, index).numpy()
             for ims, bs in ((images, boxes), (images, grown),
                             (mirror_images, mirror(boxes)), (mirror_images, mirror(grown)))]
    assert not np.allclose(views[0], views[1], atol=1e-3)  # the scale changes the crop
    got = model.classify_boxes(images, boxes, index, scales=(1.0, 1.2)).numpy()
    np.testing.assert_allclose(got, 0.5 * (views[0] + views[1]), atol=1e-4)
    both = model.classify_boxes(images, boxes, index, flip=True, scales=(1.0, 1.2)).numpy()
    np.testing.assert_allclose(both, np.mean(views, axis=0), atol=1e-4)
    assert model.classify_boxes(images, boxes[:0], index[:0], flip=True,
                                scales=(0.9, 1.0, 1.2)).shape == (0, K)

    plain = model.detect(images, max_detections=10)
    model.set_inference_options(roi_crop_scales=[1.0, 1.2])
    assert model.hparams["roi_crop_scales"] == (1.0, 1.2)
    scaled = model.detect(images, max_detections=10)
    n = int(scaled["num_detections"][0])
    assert n > 0 and not np.allclose(scaled["scores"], plain["scores"], atol=1e-4)
    probs = keras.ops.softmax(model.classify_boxes(
        images, scaled["boxes"][0, :n], tf.zeros([n], tf.int32), scales=(1.0, 1.2))).numpy()
    p = probs[np.arange(n), scaled["classes"][0, :n].numpy()]
    assert np.all(scaled["scores"][0, :n] <= p ** model.hparams["roi_crop_weight"] + 1e-5)
    with model.without_test_time_augmentation():
        np.testing.assert_allclose(model.detect(images, max_detections=10)["scores"],
                                   plain["scores"], atol=1e-5)
    assert model.hparams["roi_crop_scales"] == (1.0, 1.2)

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.hparams["roi_crop_scales"] == (1.0, 1.2)
    np.testing.assert_allclose(restored.detect(images, max_detections=10)["scores"],
                               scaled["scores"], atol=1e-5)
    for bad in ((), (1.0, 0.3), (2.5,), "1.2"):
        with pytest.raises(ValueError, match="roi_crop_scales"):
            model.set_inference_options(roi_crop_scales=bad)
    with pytest.raises(ValueError, match="roi_crop_scales"):
        _build("dense", roi_crop_size=16, roi_crop_scales=(0.1,))
    with pytest.raises(ValueError, match="no crop classifier"):
        _build("dense").set_inference_options(roi_crop_scales=(1.0, 1.2))


def test_crop_classifier_views():
    # roi_crop_views=3: each training step classifies three differently jittered crops of
    # every target box (labels repeated); evaluation classifies each box once, unjittered.
    images, targets = _scenes(3)
    model = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16), roi_crop_views=3)
    seen = []
    classify = model.classify_boxes

    def spy(images, boxes, index, training=False, flip=False):
        seen.append((boxes.numpy(), index.numpy(), training))
        return classify(images, boxes, index, training=training, flip=flip)

    model.classify_boxes = spy
    x, y = tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}
    real = targets["labels"] >= 0
    n = int(real.sum())
    model.compute_loss(x, y, training=True)
    boxes, index, training = seen[-1]
    assert training and boxes.shape == (3 * n, 4)
    np.testing.assert_array_equal(index, np.tile(np.nonzero(real)[0], 3))
    assert not np.allclose(boxes[:n], boxes[n:2 * n], atol=1e-3)  # independent jitter
    model.compute_loss(x, y, training=False)
    boxes, _, training = seen[-1]
    assert not training and boxes.shape == (n, 4)
    np.testing.assert_allclose(boxes, targets["boxes"][real], atol=1e-6)
    with pytest.raises(ValueError, match="roi_crop_views"):
        _build("dense", roi_crop_size=16, roi_crop_views=0)


def test_crop_classifier_square_context(tmp_path):
    # roi_crop_context=C: the classifier sees the square of side (1 + 2C) x the box's longer
    # side around the box's centre (a tall box keeps its shape, with context around it),
    # in training and in detect(); it survives a .keras round trip; C is checked.
    squares = box_ops.square_context_boxes(
        tf.constant([[0.2, 0.1, 0.4, 0.9], [0.5, 0.5, 0.6, 0.55]]), 0.25).numpy()
    np.testing.assert_allclose(squares, [[-0.3, -0.1, 0.9, 1.1], [0.475, 0.45, 0.625, 0.6]],
                               atol=1e-6)
    images, targets = _scenes(3)
    plain = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16))
    model = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16),
                   roi_crop_context=0.25)
    model.set_weights(plain.get_weights())
    boxes = tf.constant([[0.2, 0.1, 0.4, 0.9], [0.3, 0.0, 1.0, 0.4]], tf.float32)
    index = tf.constant([0, 1], tf.int32)
    np.testing.assert_allclose(
        model.classify_boxes(images, boxes, index),
        plain.classify_boxes(images, box_ops.square_context_boxes(boxes, 0.25), index),
        atol=1e-5)
    assert not np.allclose(model.classify_boxes(images, boxes, index),
                           plain.classify_boxes(images, boxes, index), atol=1e-3)
    x, y = tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}
    assert np.isfinite(float(model.compute_loss(x, y, training=True)))
    got = model.detect(images, max_detections=10)
    assert not np.allclose(got["scores"], plain.detect(images, max_detections=10)["scores"],
                           atol=1e-4)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.hparams["roi_crop_context"] == 0.25
    np.testing.assert_allclose(restored.detect(images, max_detections=10)["scores"],
                               got["scores"], atol=1e-5)
    with pytest.raises(ValueError, match="roi_crop_context"):
        _build("dense", roi_crop_size=16, roi_crop_context=-0.1)


def test_crop_classifier_classes_add_detections(tmp_path):
    # roi_crop_classes=k: detect() also gives each detected box the crop classifier's k
    # likeliest classes; it survives a .keras round trip and traces with an unknown batch.
    images, _ = _scenes(3)
    plain = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16))
    # The head sees only class 0 (its other classes' biases far below the threshold); the
    # untrained crop classifier spreads its probability over all three.
    bias = plain.detection_head.class_output.bias
    bias.assign([2.0, -20.0, -20.0])
    model = _build("dense", seed=3, roi_crop_size=16, roi_crop_widths=(8, 16),
                   roi_crop_classes=2)
    model.set_weights(plain.get_weights())
    threshold = 0.2
    few = plain.detect(images, max_detections=300, score_threshold=threshold)
    many = model.detect(images, max_detections=300, score_threshold=threshold)
    assert np.all(few["num_detections"] > 0) and np.all(few["num_detections"] < 100)
    n = few["num_detections"].numpy()
    assert all(set(few["classes"][i, :n[i]].numpy()) == {0} for i in range(3))
    m = many["num_detections"].numpy()
    assert all(len(set(many["classes"][i, :m[i]].numpy())) > 1 for i in range(3))
    # The class-0 detections are the plain model's (same boxes and scores).
    for i in range(3):
        zero = many["classes"][i, :m[i]].numpy() == 0
        np.testing.assert_allclose(np.sort(many["scores"][i, :m[i]].numpy()[zero]),
                                   np.sort(few["scores"][i, :n[i]].numpy()), rtol=1e-5)
    fn = tf.function(lambda x: model.detect(x, max_detections=300, score_threshold=threshold),
                     input_signature=[tf.TensorSpec((None, S, S, 3), tf.float32)])
    traced = fn(tf.constant(images))
    for key in many:
        np.testing.assert_allclose(traced[key], many[key], atol=1e-5, err_msg=key)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.hparams["roi_crop_classes"] == 2
    np.testing.assert_allclose(restored.detect(images, max_detections=300,
                                               score_threshold=threshold)["scores"],
                               many["scores"], atol=1e-5)
    with pytest.raises(ValueError, match="roi_crop_classes"):
        _build("dense", roi_crop_size=16, roi_crop_classes=-1)
    # The same options set after training (they act at inference only).
    plain.set_inference_options(roi_crop_classes=2)
    again = plain.detect(images, max_detections=300, score_threshold=threshold)
    for key in many:
        np.testing.assert_allclose(again[key], many[key], atol=1e-5, err_msg=key)
    with pytest.raises(ValueError, match="roi_crop_weight"):
        plain.set_inference_options(roi_crop_weight=1.5)
    with pytest.raises(ValueError, match="no crop classifier"):
        _build("dense").set_inference_options(roi_crop_classes=1)


def test_mirror_dense_outputs_moves_every_point_to_its_mirror():
    # Reference from the points' coordinates: the output at point p of a mirrored image
    # belongs to the point q at (1 - x_p, y_p) on the same level, and the box it decodes
    # to is q's box mirrored.
    rng = np.random.default_rng(0)
    points, point_strides = (t.numpy() for t in dense_points(S, det.STRIDES))
    n = len(points)
    outputs = {"class_logits": rng.normal(size=(2, n, K)).astype("float32"),
               "box_deltas": rng.normal(size=(2, n, 4)).astype("float32"),
               "centerness": rng.normal(size=(2, n)).astype("float32")}
    got = {k: np.asarray(v) for k, v in det.mirror_dense_outputs(outputs, S, det.STRIDES).items()}
    mirror_of = [np.flatnonzero((point_strides == s) & np.isclose(points[:, 0], 1 - x)
                                & np.isclose(points[:, 1], y)).item()
                 for (x, y), s in zip(points, point_strides)]
    assert mirror_of != list(range(n))
    np.testing.assert_array_equal(got["class_logits"], outputs["class_logits"][:, mirror_of])
    np.testing.assert_array_equal(got["centerness"], outputs["centerness"][:, mirror_of])
    boxes = decode_boxes(outputs["box_deltas"], S, det.STRIDES).numpy()[:, mirror_of]
    np.testing.assert_allclose(decode_boxes(got["box_deltas"], S, det.STRIDES),
                               np.stack([1 - boxes[..., 2], boxes[..., 1], 1 - boxes[..., 0],
                                         boxes[..., 3]], -1), atol=1e-6)


def test_test_time_flip_makes_detection_mirror_equivariant(tmp_path):
    # With test_time_flip an image and its mirror get the same detections, mirrored (the
    # head's outputs are averaged over both views); without it they do not. The option
    # can be set after training, survives a .keras round trip and traces with an unknown
    # batch, is off inside `without_test_time_augmentation`; the DETR head refuses it.
    images, _ = _scenes(3)
    mirror_images = np.ascontiguousarray(images[:, :, ::-1])
    model = _build("dense", seed=5, prior_probability=0.3, test_time_flip=True)
    plain = _build("dense", seed=5, prior_probability=0.3)

    def mirrored(result):
        b = np.asarray(result["boxes"])
        return np.stack([1 - b[..., 2], b[..., 1], 1 - b[..., 0], b[..., 3]], -1)

    got, flip = (model.detect(x, max_detections=10) for x in (images, mirror_images))
    assert int(np.min(got["num_detections"])) > 0
    np.testing.assert_allclose(flip["scores"], got["scores"], atol=1e-5)
    np.testing.assert_array_equal(flip["classes"], got["classes"])
    np.testing.assert_allclose(mirrored(flip), got["boxes"], atol=1e-5)
    without, flip_without = (plain.detect(x, max_detections=10) for x in (images, mirror_images))
    assert not np.allclose(flip_without["scores"], without["scores"], atol=1e-4, rtol=0)

    with model.without_test_time_augmentation():  # training's per-epoch score
        np.testing.assert_allclose(model.detect(images, max_detections=10)["scores"],
                                   without["scores"], atol=1e-5)
    assert model.hparams["test_time_flip"]
    plain.set_inference_options(test_time_flip=True)
    fn = tf.function(lambda x: plain.detect(x, max_detections=10),
                     input_signature=[tf.TensorSpec((None, S, S, 3), tf.float32)])
    for result in (plain.detect(images, max_detections=10), fn(tf.constant(images))):
        for key in got:
            np.testing.assert_allclose(result[key], got[key], atol=1e-5, err_msg=key)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert restored.hparams["test_time_flip"]
    np.testing.assert_allclose(restored.detect(images, max_detections=10)["scores"],
                               got["scores"], atol=1e-5)
    with pytest.raises(ValueError, match="test_time_flip"):
        _build("detr").set_inference_options(test_time_flip=True)
    with pytest.raises(ValueError, match="test_time_flip"):
        _build("detr", test_time_flip=True)
