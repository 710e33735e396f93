"""The device path: stored batches finished by torch and ``keras.ops``, against the CPU path.

``ShardBatches.stored_batch`` (the host side, ``loader.stored_batch``) with
``loader.device_torch`` and ``loader.device_keras`` (run here on the CPU device) must give the
batches of ``ShardBatches.batch``: labels and known-label masks bit for bit, features within
``loader.stored_batch.feature_tolerance`` (on the CPU device, operation by operation, they
come out bit for bit as well), for every augmentation and stored codec.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from reference import run_python
from synthetic_features import LABELLED_SET, make_feature_set

torch = pytest.importorskip("torch")  # part of the dev install
keras = pytest.importorskip("keras")

from loader import Augment, ShardBatches, ShardSequence, device_keras, device_torch  # noqa: E402
from loader.sequence import PairedSequence  # noqa: E402
from loader.stored_batch import INPUT_FIELDS, feature_tolerance  # noqa: E402
from loader.torch import ShardDataset  # noqa: E402
from melshards.errors import ConfigError  # noqa: E402

CODECS = {
    "float16": {},
    "uint8": {"dtype": "uint8"},
    "float32": {"dtype": "float32"},
    "uint8-zstd": {"dtype": "uint8", "compression": "zstd"},
}
# Every augmentation alone, and all together. Gains up to 1.5 push values of 0.5..1 past the
# clip at 1 (the synthetic sets are min-max normalized).
QUIET = {"shift": False, "gain": (1.0, 1.0), "freq_masks": 0, "time_masks": 0}
AUGMENTS = {
    "none": Augment.off(),
    "shift": Augment(**{**QUIET, "shift": True}),
    "gain": Augment(**{**QUIET, "gain": (0.5, 1.5)}),
    "mixup-max": Augment(**QUIET, mixup_p=0.7),
    "mixup-weighted": Augment(**QUIET, mixup_p=0.7, mixup_labels="weighted"),
    "time-masks": Augment(**{**QUIET, "time_masks": 3, "time_mask_max": 30, "mask_value": "zero"}),
    "freq-masks": Augment(**{**QUIET, "freq_masks": 3, "freq_mask_max": 6}),
    "all": Augment(gain=(0.5, 1.5), mixup_p=0.7, mixup_labels="weighted", freq_mask_max=6, time_mask_max=30),
}
OPTIONS = {"split": "train", "batch_size": 8, "seed": 3, "return_mask": True, "lookahead": False}
# (codec, augmentation, output dtype): every codec with every augmentation into float32, and
# float16 output for every augmentation from float16 and uint8 storage.
CASES = [(c, a, "float32") for c in CODECS for a in AUGMENTS] + [
    (c, a, "float16") for c in ("float16", "uint8") for a in AUGMENTS
]


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("device")
    return {name: make_feature_set(root / name, **LABELLED_SET, **codec) for name, codec in CODECS.items()}


def assert_matches(built, expected) -> None:
    """Labels and masks bit for bit, features within ``feature_tolerance``, same dtypes and shapes."""
    built = [np.asarray(a) for a in built]
    assert len(built) == len(expected)
    for got, want in zip(built, expected, strict=True):
        assert (got.dtype, got.shape) == (want.dtype, want.shape)
    for got, want in zip(built[1:], expected[1:], strict=True):
        np.testing.assert_array_equal(got, want)
    x, want = built[0].astype(np.float64), expected[0].astype(np.float64)
    assert (np.abs(x - want) <= feature_tolerance(expected[0])).all()


def cpu_and_stored(batches: ShardBatches, epoch: int = 1):
    """Every batch of ``epoch`` both ways: the CPU path's arrays (copied) and the stored batch."""
    for i in range(len(batches)):
        yield [a.copy() for a in batches.batch(i, epoch=epoch)], batches.stored_batch(i, epoch=epoch)


@pytest.mark.parametrize(("codec", "augment", "dtype"), CASES)
def test_torch_builds_the_cpu_paths_batches(feature_sets, codec, augment, dtype):
    batches = ShardBatches(feature_sets[codec], **OPTIONS, augment=AUGMENTS[augment], dtype=dtype)
    recipe = batches.device_recipe
    for expected, stored in cpu_and_stored(batches):
        tensors = {name: torch.from_numpy(a) for name, a in stored.arrays().items()}
        assert_matches(device_torch.build_batch(tensors, recipe), expected)


@pytest.mark.parametrize(("codec", "augment", "dtype"), CASES)
def test_keras_ops_on_tensorflow_build_the_cpu_paths_batches(feature_sets, codec, augment, dtype):
    assert keras.backend.backend() == "tensorflow"
    batches = ShardBatches(feature_sets[codec], **OPTIONS, augment=AUGMENTS[augment], dtype=dtype)
    recipe = batches.device_recipe
    for expected, stored in cpu_and_stored(batches):
        built = device_keras.build_batch(stored.inputs(), stored.y, stored.known, recipe)
        assert_matches([keras.ops.convert_to_numpy(t) for t in built], expected)


def test_on_the_cpu_device_the_features_are_bit_for_bit(feature_sets):
    batches = ShardBatches(feature_sets["uint8"], **OPTIONS, augment=AUGMENTS["all"])
    recipe = batches.device_recipe
    for expected, stored in cpu_and_stored(batches):
        tensors = {name: torch.from_numpy(a) for name, a in stored.arrays().items()}
        np.testing.assert_array_equal(device_torch.build_batch(tensors, recipe)[0].numpy(), expected[0])


def test_keras_ops_on_jax_build_the_cpu_paths_batches(feature_sets):
    pytest.importorskip("jax")
    cases = [[str(feature_sets[c]), AUGMENTS[a].to_dict(), d] for c, a, d in CASES]
    done = run_python(
        """
        import json, sys
        import keras, numpy as np
        from loader import Augment, ShardBatches
        from loader.device_keras import build_batch
        from loader.stored_batch import feature_tolerance
        options = json.loads(sys.argv[2])
        cases = json.loads(sys.argv[1])
        report = {"backend": keras.backend.backend(), "batches": 0, "labels_differ": 0, "beyond": 0}
        for path, augment, dtype in cases:
            batches = ShardBatches(path, **options, augment=Augment.from_dict(augment), dtype=dtype)
            recipe = batches.device_recipe
            for i in range(len(batches)):
                expected = [a.copy() for a in batches.batch(i, epoch=1)]
                stored = batches.stored_batch(i, epoch=1)
                built = [keras.ops.convert_to_numpy(t) for t in
                         build_batch(stored.inputs(), stored.y, stored.known, recipe)]
                report["batches"] += 1
                report["labels_differ"] += sum(
                    not (g.dtype == w.dtype and np.array_equal(g, w)) for g, w in zip(built[1:], expected[1:]))
                gap = np.abs(built[0].astype(np.float64) - expected[0].astype(np.float64))
                report["beyond"] += int(built[0].dtype != expected[0].dtype
                                        or (gap > feature_tolerance(expected[0])).any())
        # model.fit from finished batches and from stored batches built in the jitted step
        from loader import ShardSequence
        from loader.device_keras import DeviceBatchModel
        losses, weights = [], []
        for on_device in (False, True):
            seq = ShardSequence(cases[-1][0], **{**options, "return_mask": False}, on_device=on_device,
                                augment=Augment.from_dict(cases[-1][1]))
            keras.utils.set_random_seed(0)
            model = keras.Sequential([keras.Input((16, 101, 1)), keras.layers.Conv2D(4, 3),
                                      keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)])
            trainer = DeviceBatchModel(model, seq.device_recipe) if on_device else model
            trainer.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
            losses.append(trainer.fit(seq, epochs=2, shuffle=False, verbose=0).history["loss"])
            weights.append(model.get_weights())
        report["loss_gap"] = float(np.max(np.abs(np.subtract(*losses)) / np.abs(losses[0])))
        report["weight_gap"] = max(float(np.abs(a - b).max()) for a, b in zip(*weights))
        print(json.dumps(report))
        """,
        json.dumps(cases),
        json.dumps(OPTIONS),
        env={"KERAS_BACKEND": "jax"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # XLA compiles the step: the loss may round differently in its last bits, the weights not much
    assert report.pop("loss_gap") < 1e-5 and report.pop("weight_gap") < 1e-5
    n_batches = len(ShardBatches(feature_sets["float16"], **OPTIONS)) * len(CASES)
    assert report == {"backend": "jax", "batches": n_batches, "labels_differ": 0, "beyond": 0}


@pytest.mark.parametrize("mixup_labels", ["max", "weighted"])
def test_frame_targets_mix_step_by_step_on_the_device(feature_sets, mixup_labels):
    augment = Augment(gain=(0.5, 1.5), mixup_p=0.7, mixup_labels=mixup_labels)
    batches = ShardBatches(feature_sets["uint8"], **OPTIONS, augment=augment, targets="frames", target_step=8)
    recipe = batches.device_recipe
    mixed = 0
    for expected, stored in cpu_and_stored(batches):
        assert stored.y.shape == (stored.stored.shape[0], 13, 4)  # ceil(101 / 8) steps
        mixed += int((stored.partner >= 0).sum())
        tensors = {name: torch.from_numpy(a) for name, a in stored.arrays().items()}
        assert_matches(device_torch.build_batch(tensors, recipe), expected)
        built = device_keras.build_batch(stored.inputs(), stored.y, stored.known, recipe)
        assert_matches([keras.ops.convert_to_numpy(t) for t in built], expected)
    assert mixed > 0


def test_stored_batch_holds_the_stored_codes_and_draws(feature_sets):
    root = feature_sets["uint8"]
    batches = ShardBatches(root, **OPTIONS, augment=AUGMENTS["all"])
    stored = batches.stored_batch(2, epoch=1)
    ids = batches.batch_example_ids(2, epoch=1)
    params = batches.batch_params(2, ids.shape[0], epoch=1)
    crop = batches.crop_frames
    assert stored.stored.dtype == np.uint8 and stored.stored.shape == (8, 16, crop)
    for row, (example, start) in enumerate(zip(ids, params.crop_start, strict=True)):
        shard, offset = divmod(int(example), LABELLED_SET["shard_size"])
        with h5py.File(root / f"shard-{shard:05d}.h5", "r") as h5:
            codes = h5["mel"][offset, :, start : start + crop]
        np.testing.assert_array_equal(stored.stored[row], codes)
    np.testing.assert_array_equal(stored.offset, batches.features.mel_offset[ids])
    np.testing.assert_array_equal(stored.partner, params.partner)
    np.testing.assert_array_equal(stored.time, params.time)
    assert list(stored.inputs()) == list(INPUT_FIELDS)
    # codes, offsets, draws and labels: well under a third of the float32 batch's bytes
    assert stored.nbytes < batches.batch(2, epoch=1)[0].nbytes / 3


def test_in_memory_reads_the_same_stored_batches(feature_sets):
    on_disk = ShardBatches(feature_sets["uint8"], **OPTIONS, augment=AUGMENTS["all"])
    in_ram = ShardBatches(feature_sets["uint8"], **OPTIONS, augment=AUGMENTS["all"], in_memory=True)
    for i in range(len(on_disk)):
        a, b = on_disk.stored_batch(i, epoch=2), in_ram.stored_batch(i, epoch=2)
        for name, array in a.arrays().items():
            np.testing.assert_array_equal(array, b.arrays()[name])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_shard_dataset_on_device_through_a_dataloader(feature_sets, num_workers):
    root = feature_sets["uint8"]
    options = {**OPTIONS, "augment": AUGMENTS["all"], "lookahead": True}
    reference = ShardDataset(root, **options)
    data = ShardDataset(root, **options, on_device=True)
    loader = data.loader(num_workers=num_workers, persistent_workers=num_workers > 0)
    for epoch in (0, 3):
        data.set_epoch(epoch)
        reference.set_epoch(epoch)
        items = list(loader)
        assert len(items) == len(reference) and data.state_dict()["batch"] == len(items)
        for item, i in zip(items, range(len(reference)), strict=True):
            assert set(item) == {*INPUT_FIELDS, "y", "known"} and item["stored"].dtype == torch.uint8
            expected = [t.numpy().copy() for t in reference[(epoch, i)]]
            assert_matches(data.to_device(item, "cpu"), expected)
    data.close()
    reference.close()


def test_ranks_get_their_own_batches_on_the_device(feature_sets):
    root = feature_sets["float16"]
    seen = []
    for rank in (0, 1):
        options = {**OPTIONS, "augment": AUGMENTS["all"], "rank": rank, "world_size": 2}
        reference = ShardDataset(root, **options)
        data = ShardDataset(root, **options, on_device=True)
        assert len(data) == len(reference) > 0
        for i in range(len(data)):
            expected = [t.numpy().copy() for t in reference[(1, i)]]
            assert_matches(data.to_device(data[(1, i)]), expected)
            seen.append(set(data.batches.batch_example_ids(i, epoch=1)))
    half = len(seen) // 2
    assert not set().union(*seen[:half]) & set().union(*seen[half:])  # disjoint blocks


def test_shard_sequence_on_device_yields_stored_inputs(feature_sets):
    seq = ShardSequence(feature_sets["uint8"], **OPTIONS, augment=AUGMENTS["all"], on_device=True)
    inputs, y, known = seq[0]
    assert list(inputs) == list(INPUT_FIELDS) and inputs["stored"].dtype == np.uint8
    built = device_keras.build_batch(inputs, y, known, seq.device_recipe)
    assert_matches([keras.ops.convert_to_numpy(t) for t in built], [a.copy() for a in seq.batch(0)])
    x, *_ = seq.as_tf_dataset(prefetch=None).take(1).get_single_element()
    assert x.shape[1:] == (16, 101, 1)  # tf.data gives finished batches still


def small_model(seed: int):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16, 101, 1)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ]
    )


def test_device_batch_model_fits_as_the_cpu_path(feature_sets):
    from experiments.losses import MaskedBinaryCrossentropy

    options = {**OPTIONS, "augment": Augment(gain=(0.5, 1.5), mixup_p=0.7, mixup_labels="weighted")}
    histories, weights = [], []
    for on_device in (False, True):
        seq = ShardSequence(feature_sets["uint8"], **options, on_device=on_device)
        val = ShardSequence(feature_sets["uint8"], **{**OPTIONS, "split": "val"}, on_device=on_device)
        model = small_model(0)
        trainer = device_keras.DeviceBatchModel(model, seq.device_recipe) if on_device else model
        trainer.compile(optimizer="adam", loss=MaskedBinaryCrossentropy(from_logits=True))
        history = trainer.fit(seq, validation_data=val, epochs=2, shuffle=False, verbose=0).history
        histories.append(history["loss"] + history["val_loss"])
        weights.append(model.get_weights())
    np.testing.assert_allclose(histories[1], histories[0], rtol=1e-6)
    for got, want in zip(weights[1], weights[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    stored = seq[0][0]
    predicted = trainer.predict(stored, verbose=0)
    finished = seq.batch(0, epoch=seq.epoch)[0]
    np.testing.assert_allclose(predicted, model.predict(finished, verbose=0), rtol=1e-6, atol=1e-6)


def test_wrong_uses_are_one_line_errors(feature_sets):
    root = feature_sets["float16"]
    with pytest.raises(ConfigError, match="ShardDataset: on_device must be True or False, got 'yes'"):
        ShardDataset(root, on_device="yes")
    with pytest.raises(ConfigError, match="ShardSequence: on_device must be True or False, got 1"):
        ShardSequence(root, on_device=1)
    plain = ShardDataset(root, **OPTIONS)
    with pytest.raises(ConfigError, match="items are finished batches; make the dataset with on_device=True"):
        plain.to_device(plain[0])
    recipe = ShardDataset(root, **OPTIONS, on_device=True).recipe
    with pytest.raises(ConfigError, match=r"expected the tensors of a stored batch .* got tuple"):
        device_torch.build_batch(plain[0], recipe)
    with pytest.raises(ConfigError, match=r"expected the inputs of a stored batch .* got ndarray"):
        device_keras.build_features(np.zeros((2, 16, 101, 1), np.float32), recipe)
    with pytest.raises(
        ConfigError, match="DeviceBatchModel: recipe must be a sequence's device_recipe, got dict"
    ):
        device_keras.DeviceBatchModel(small_model(0), {})
    first = ShardSequence(root, split="train", on_device=True)
    with pytest.raises(ConfigError, match="paired sequences take finished batches"):
        PairedSequence(first, ShardSequence(root, split="val"))


def doc_blocks() -> list[str]:
    """The python blocks of docs/loader.md's section on the device path, in order."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "loader.md").read_text()
    section = doc[doc.index("## Batches built on the accelerator") :]
    section = section[: section.index("\n## ", 1)]
    return [block.split("```")[0] for block in section.split("```python\n")[1:]]


def test_the_device_path_examples_in_the_docs_run_as_written(feature_sets, tmp_path, monkeypatch, capsys):
    loop, fit = doc_blocks()
    root = str(feature_sets["uint8"])
    torch.manual_seed(0)
    exec(compile(loop.replace("features/demo", root), "docs/loader.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0::2] == ["0", "1"] and all(0 < float(v) < 2 for v in printed[1::2])
    monkeypatch.chdir(tmp_path)
    code = fit.replace("features/demo", root).replace("(128, 938, 1)", "(16, 101, 1)")
    exec(compile(code.replace("epochs=2", "epochs=1, verbose=0"), "docs/loader.md", "exec"), {})
    assert (tmp_path / "model.keras").is_file()
