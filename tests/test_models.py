import keras
import numpy as np
import pytest

from experiments.models import available_models, build_model, is_frame_model
from melshards.errors import ConfigError


@pytest.mark.parametrize("name", [n for n in available_models() if not is_frame_model(n)])
@pytest.mark.parametrize("shape", [(16, 50, 1), (128, 938, 1)])
def test_models_build_and_score_in_unit_interval(name, shape):
    model = build_model(name, input_shape=shape, n_classes=24)
    assert model.input_shape == (None, *shape)
    assert model.output_shape == (None, 24)
    x = np.random.default_rng(0).random((2, *shape)).astype("float32")
    scores = keras.ops.convert_to_numpy(model(x, training=False))
    assert scores.shape == (2, 24)
    assert np.all((scores > 0) & (scores < 1))


@pytest.mark.parametrize("name", ["baseline", "tiny"])
def test_float16_input_is_cast_inside_the_model(name):
    model = build_model(name, input_shape=(16, 50, 1), n_classes=5)
    x16 = np.random.default_rng(1).random((3, 16, 50, 1)).astype("float16")
    from_half = keras.ops.convert_to_numpy(model(x16, training=False))
    from_single = keras.ops.convert_to_numpy(model(x16.astype("float32"), training=False))
    assert from_half.dtype == np.float32
    np.testing.assert_array_equal(from_half, from_single)


def test_registry_has_baseline_and_more():
    assert "baseline" in available_models() and len(available_models()) >= 2


def test_saved_model_loads_without_project_code(tmp_path):
    model = build_model("tiny", input_shape=(16, 50, 1), n_classes=3)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path, compile=False)
    x = np.random.default_rng(2).random((2, 16, 50, 1)).astype("float32")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_unknown_model_lists_names():
    with pytest.raises(
        ConfigError, match=r"unknown model 'resnet'; available models: baseline, sed, sed_gated, tiny, wide"
    ):
        build_model("resnet", input_shape=(16, 50, 1), n_classes=3)


def test_bad_input_shape():
    with pytest.raises(ConfigError, match=r"\(n_mels, frames, 1\)"):
        build_model("baseline", input_shape=(16, 50), n_classes=3)
