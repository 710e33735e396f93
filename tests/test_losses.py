import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from experiments.losses import MaskedBinaryCrossentropy
from melshards.errors import ConfigError

# 2 samples x 3 classes; mask 0 = unknown label (no TP or FP annotation)
Y = np.array([[1, 0, 0], [0, 1, 0]], dtype="float32")
P = np.array([[0.8, 0.3, 0.6], [0.5, 0.9, 0.1]], dtype="float32")
MASK = np.array([[1, 1, 0], [1, 0, 1]], dtype="float32")


def loss_value(loss, y, p, mask):
    return float(loss(y, p, sample_weight=mask))


def test_ignore_hand_computed():
    # known entries: -ln .8, -ln .7, -ln .5, -ln .9 (row 1, class 2: 1 - .1); mean over 4
    expected = -(math.log(0.8) + math.log(0.7) + math.log(0.5) + math.log(0.9)) / 4
    got = loss_value(MaskedBinaryCrossentropy(unknown="ignore"), Y, P, MASK)
    assert got == pytest.approx(expected, rel=1e-5)


def test_negative_with_weight_hand_computed():
    # unknowns count as negatives with weight 0.5: (0, 2) p=.6 -> -ln .4; (1, 1) y=1 p=.9 -> -ln .9
    known = -(math.log(0.8) + math.log(0.7) + math.log(0.5) + math.log(0.9))
    unknown = -(math.log(0.4) + math.log(0.9))
    expected = (known + 0.5 * unknown) / (4 + 0.5 * 2)
    loss = MaskedBinaryCrossentropy(unknown="negative", unknown_weight=0.5)
    assert loss_value(loss, Y, P, MASK) == pytest.approx(expected, rel=1e-5)


def test_negative_weight_one_is_plain_bce():
    plain = keras.losses.BinaryCrossentropy()(Y, P)
    masked = MaskedBinaryCrossentropy(unknown="negative", unknown_weight=1.0)
    assert loss_value(masked, Y, P, MASK) == pytest.approx(float(plain), rel=1e-5)
    assert float(masked(Y, P)) == pytest.approx(float(plain), rel=1e-5)


def test_masked_entries_do_not_change_loss_or_gradient():
    loss = MaskedBinaryCrossentropy(unknown="ignore")
    moved = P.copy()
    moved[0, 2] = 0.01
    moved[1, 1] = 0.99
    assert loss_value(loss, Y, moved, MASK) == loss_value(loss, Y, P, MASK)
    p = tf.Variable(P)
    with tf.GradientTape() as tape:
        value = loss(Y, p, sample_weight=MASK)
    grad = tape.gradient(value, p).numpy()
    assert grad[0, 2] == 0.0 and grad[1, 1] == 0.0
    assert np.all(grad[MASK == 1] != 0.0)


def test_fit_applies_mask_per_class():
    # A model whose scores are sigmoid(bias): one SGD step on (x, y, mask) batches must leave
    # the bias of a class that is unknown in every row exactly where it was.
    inputs = keras.Input(shape=(1,))
    outputs = keras.layers.Dense(3, activation="sigmoid", kernel_initializer="zeros")(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss=MaskedBinaryCrossentropy(unknown="ignore"))
    x = np.zeros((4, 1), dtype="float32")
    y = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype="float32")
    mask = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0], [1, 1, 0]], dtype="float32")
    model.fit(x, y, sample_weight=mask, batch_size=4, epochs=1, verbose=0)
    bias = model.layers[-1].bias.numpy()
    assert bias[2] == 0.0
    # class 0: two positives, two negatives at p=.5 -> zero gradient; class 1: 1 pos, 2 neg
    assert bias[0] == pytest.approx(0.0, abs=1e-7)
    # d/db of sum(bce)/sum(w) = sum(p - y)/7 over known entries = (.5*3 - 1)/7 for class 1
    assert bias[1] == pytest.approx(-(0.5 * 3 - 1) / 7, abs=1e-6)


def test_config_round_trip_and_validation():
    loss = MaskedBinaryCrossentropy(unknown="ignore", unknown_weight=0.3)
    again = MaskedBinaryCrossentropy.from_config(loss.get_config())
    assert (again.unknown, again.unknown_weight) == ("ignore", 0.3)
    with pytest.raises(ConfigError, match="unknown must be one of negative, ignore"):
        MaskedBinaryCrossentropy(unknown="zero")
    with pytest.raises(ConfigError, match="unknown_weight"):
        MaskedBinaryCrossentropy(unknown_weight=-1)
