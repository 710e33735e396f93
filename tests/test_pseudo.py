import json
from pathlib import Path

import numpy as np
import pytest

from experiments import pseudo
from melshards.config import FeatureConfig, center_offset, crop_span
from melshards.errors import ConfigError

# 1 s crops with 0.25 s of context; 100 frames per second.
CONFIG = FeatureConfig(
    sample_rate=16000,
    n_fft=512,
    hop_length=160,
    n_mels=16,
    fmax=8000,
    duration=1.0,
    context=0.25,
    n_classes=3,
)


def crop(start):
    return crop_span(CONFIG, start, center_offset(CONFIG), CONFIG.crop_frames)


def test_soft_label_is_the_highest_score_of_the_windows_covering_the_crop():
    # example crop [0.25, 1.24]; windows every 0.5 s: crops [0.25..], [0.75..], [1.25..], [1.75..]
    scores = np.array([[0.1, 0.9, 0.0], [0.6, 0.2, 0.0], [0.95, 0.95, 0.95], [0.3, 0.3, 0.3]], np.float32)
    windows = (np.array(["a", "a", "a", "b"]), np.array([0.0, 0.5, 1.0, 0.0]), scores)
    examples = (np.array(["a", "b", "c"]), np.array([0.0, 0.0, 0.0]))
    soft = pseudo.soft_labels(CONFIG, examples, windows)
    t0, t1 = crop(0.0)
    w0, w1 = crop(np.array([0.0, 0.5, 1.0]))
    cover = (np.minimum(t1, w1) - np.maximum(t0, w0)) / (t1 - t0)
    assert cover[0] == pytest.approx(1.0) and cover[1] > 0.49 and cover[2] <= 0  # the third only touches it
    np.testing.assert_array_equal(soft[0], np.max(scores[:2], axis=0))
    np.testing.assert_array_equal(soft[1], scores[3])  # only windows of its own recording
    assert np.isnan(soft[2]).all()  # no window of recording "c": labels stay unknown
    assert soft.dtype == np.float32


def test_min_cover_decides_which_windows_count():
    scores = np.array([[0.1, 0.1, 0.1], [0.8, 0.8, 0.8]], np.float32)
    windows = (np.array(["a", "a"]), np.array([0.0, 0.7]), scores)
    examples = (np.array(["a"]), np.array([0.0]))
    # the second window's crop covers 30% of the example's crop
    np.testing.assert_array_equal(pseudo.soft_labels(CONFIG, examples, windows, min_cover=0.5)[0], scores[0])
    np.testing.assert_array_equal(pseudo.soft_labels(CONFIG, examples, windows, min_cover=0.25)[0], scores[1])


def test_mismatched_window_arrays_are_refused():
    with pytest.raises(Exception, match="2 window ids, 1 starts, 2 score rows"):
        pseudo.soft_labels(
            CONFIG,
            (np.array(["a"]), np.array([0.0])),
            (np.array(["a", "a"]), np.array([0.0]), np.zeros((2, 3))),
        )


# -- soft labels in the loader and the loss -----------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    from synthetic_features import make_feature_set

    return make_feature_set(
        tmp_path_factory.mktemp("soft") / "f", n_recordings=6, per_recording=4, n_classes=4, seed=2
    )


def _soft_table(n_examples, n_classes):
    rng = np.random.default_rng(0)
    soft = rng.random((n_examples, n_classes)).astype(np.float32)
    soft[::3, 1] = np.nan  # no window covered these: their unknown labels stay unknown
    return soft


def test_soft_labels_fill_only_unknown_labels_and_leave_x_alone(small_set, tmp_path):
    from loader import ShardSequence

    options = {"split": "train", "batch_size": 8, "augment": False, "return_mask": True, "seed": 3}
    plain = ShardSequence(small_set, **options)
    soft = _soft_table(plain.features.n_examples, plain.config.n_classes)
    np.save(tmp_path / "soft.npy", soft)
    filled = ShardSequence(small_set, soft_labels=tmp_path / "soft.npy", **options)
    checked = 0
    for i in range(len(plain)):
        x0, y0, k0 = plain[i]
        x1, y1, k1 = filled[i]
        ids = plain.batch_example_ids(i)
        np.testing.assert_array_equal(x0, x1)
        hard = k0 == 1
        np.testing.assert_array_equal(y1[hard], y0[hard])
        take = ~hard & ~np.isnan(soft[ids])
        np.testing.assert_array_equal(y1[take], soft[ids][take])
        np.testing.assert_array_equal(k1, k0)  # soft labels weigh as unknown labels do
        stay = ~hard & np.isnan(soft[ids])
        assert (k1[stay] == 0).all() and (y1[stay] == 0).all()
        checked += int(take.sum())
    assert checked > 20


def test_soft_labels_reach_the_loss_unchanged(small_set):
    from experiments.losses import MaskedBinaryCrossentropy
    from loader import ShardSequence

    seq = ShardSequence(small_set, split="all", batch_size=8, augment=False, return_mask=True, shuffle=False)
    soft = _soft_table(seq.features.n_examples, seq.config.n_classes)
    seq = ShardSequence(
        small_set, split="all", batch_size=8, augment=False, return_mask=True, shuffle=False, soft_labels=soft
    )
    _, y, known = seq[0]
    pred = np.clip(np.random.default_rng(1).random(y.shape), 0.05, 0.95).astype(np.float32)
    loss = float(
        MaskedBinaryCrossentropy(unknown="negative", unknown_weight=0.3)(y, pred, sample_weight=known)
    )
    bce = -(y * np.log(pred) + (1 - y) * np.log(1 - pred))
    weight = known + 0.3 * (1 - known)
    assert loss == pytest.approx(float((bce * weight).sum() / weight.sum()), rel=1e-5)
    assert ((y > 0) & (y < 1)).any()  # soft targets, not rounded


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda n, c: np.zeros((n, c + 1), np.float32), r"shape \(\d+, 4\)"),
        (lambda n, c: np.zeros((n, c), np.int64), "must be floats"),
        (lambda n, c: np.full((n, c), 1.5, np.float32), "example 0 has a soft label outside"),
    ],
)
def test_bad_soft_labels_are_refused(small_set, make, message):
    from loader import ShardSequence
    from melshards.errors import ConfigError

    n = ShardSequence(small_set, split="all").features.n_examples
    with pytest.raises(ConfigError, match=message):
        ShardSequence(small_set, split="all", soft_labels=make(n, 4))


def recipe_run(tmp_path: Path, recipe: str, *, windows_per_recording: int = 6) -> tuple[list[str], dict]:
    """A labelled set (8 recordings x 3 examples, 3 classes), a windows set over the same
    recordings and ``recipe`` written out: the ``experiments.pseudo`` arguments for them, and
    their paths (``labelled``, ``windows``, ``out``)."""
    from synthetic_features import make_feature_set

    paths = {
        "labelled": make_feature_set(tmp_path / "l", n_recordings=8, per_recording=3, n_classes=3, seed=4),
        "windows": make_feature_set(
            tmp_path / "w", n_recordings=8, per_recording=windows_per_recording, n_classes=3, kind="windows"
        ),
        "out": tmp_path / "runs",
    }
    (tmp_path / "recipe.toml").write_text(recipe)
    argv = ["--features", str(paths["labelled"]), "--windows", str(paths["windows"])]
    argv += ["--out", str(paths["out"]), "--recipe", str(tmp_path / "recipe.toml")]
    return argv, paths


@pytest.mark.parametrize("train_on", ["windows", "both"])
def test_rounds_train_from_soft_labels_of_the_previous_model(tmp_path, train_on):
    from loader.feature_set import open_feature_set

    argv, paths = recipe_run(
        tmp_path,
        '[train]\nmodel = "tiny"\nepochs = 1\nbatch_size = 8\nunknown_weight = 0.3\n'
        f'[pseudo]\nrounds = 1\ntrain_on = "{train_on}"\n',
        windows_per_recording=10,
    )
    labelled, windows, out = paths["labelled"], paths["windows"], paths["out"]
    assert pseudo.main([*argv, "--quiet"]) == 0

    first, second = (json.loads((out / f"round-{r}" / "seed-0" / "metrics.json").read_text()) for r in (0, 1))
    run_dir = out / "round-1" / "seed-0"
    assert first["config"]["train"]["soft_labels"] is None and first["config"]["train"]["windows"] is None
    assert second["config"]["train"]["windows"] == str(windows)
    assert second["config"]["train"]["window_labels"] == str(run_dir / pseudo.WINDOW_FILE)
    expected_soft = str(run_dir / pseudo.SOFT_FILE) if train_on == "both" else None
    assert second["config"]["train"]["soft_labels"] == expected_soft
    assert second["config"]["train"]["unknown_weight"] == 0.3
    # round 0's model scoring the windows: their own labels, and per labelled example the
    # highest score of the windows covering its crop
    order, ids, starts, scores, wconfig = pseudo.score_window_set(
        (run_dir.parent.parent / "round-0" / "seed-0" / "model.keras",), windows
    )
    np.testing.assert_allclose(np.load(run_dir / pseudo.WINDOW_FILE)[order], scores, rtol=1e-5)
    feats = open_feature_set(labelled)
    expected = pseudo.soft_labels(
        feats.config, (feats.recording_id, feats.start), (ids, starts, scores), window_config=wconfig
    )
    np.testing.assert_allclose(np.load(run_dir / pseudo.SOFT_FILE), expected, rtol=1e-5)
    assert np.isfinite(expected).all()
    # the windows trained on are those of the training fold's recordings, not of validation
    assert second["n_train"] > first["n_train"]
    table = (out / "comparison.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| round 0", "| round 1"]
    # a second call trains nothing
    before = (run_dir / pseudo.WINDOW_FILE).stat().st_mtime_ns
    assert pseudo.main([*argv, "--quiet"]) == 0
    assert (run_dir / pseudo.WINDOW_FILE).stat().st_mtime_ns == before


def test_an_ensemble_teacher_averages_every_seeds_scores(tmp_path):

    argv, paths = recipe_run(
        tmp_path,
        '[train]\nmodel = "tiny"\nepochs = 1\nbatch_size = 8\n[pseudo]\nrounds = 1\nteacher = "ensemble"\n',
    )
    windows, out = paths["windows"], paths["out"]
    assert pseudo.main([*argv, "--seeds", "0", "1", "--quiet"]) == 0
    models = [out / "round-0" / f"seed-{s}" / "model.keras" for s in (0, 1)]
    order, _, _, first, _ = pseudo.score_window_set(models[:1], windows)
    second = pseudo.score_window_set(models[1:], windows)[3]
    assert np.abs(first - second).max() > 1e-3  # two different teachers
    for seed in (0, 1):
        labels = np.load(out / "round-1" / f"seed-{seed}" / pseudo.WINDOW_FILE)[order]
        np.testing.assert_allclose(labels, (first + second) / 2, rtol=1e-5, atol=1e-6)
    assert pseudo.teachers(out, 1, 1, (0, 1), "own") == (models[1],)


def test_a_warm_started_round_fine_tunes_its_seeds_previous_model(tmp_path):
    import keras

    argv, paths = recipe_run(
        tmp_path,
        '[train]\nmodel = "tiny"\nepochs = 2\nbatch_size = 8\n'
        "[pseudo]\nrounds = 1\nwarm_start = true\n[pseudo.train]\nepochs = 1\nlr = 1e-9\n",
    )
    out = paths["out"]
    assert pseudo.main([*argv, "--quiet"]) == 0
    teacher = out / "round-0" / "seed-0" / "model.keras"
    second = json.loads((out / "round-1" / "seed-0" / "metrics.json").read_text())
    assert second["config"]["train"]["init_from"] == str(teacher)
    assert (second["config"]["train"]["epochs"], second["config"]["train"]["lr"]) == (1, 1e-9)
    # a learning rate of 1e-9 leaves the teacher's trainable weights as they were
    before = keras.saving.load_model(teacher, compile=False).trainable_weights
    after = keras.saving.load_model(
        out / "round-1" / "seed-0" / "model.keras", compile=False
    ).trainable_weights
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    first = json.loads((out / "round-0" / "seed-0" / "metrics.json").read_text())
    assert first["config"]["train"]["init_from"] is None and first["config"]["train"]["epochs"] == 2


def test_a_control_round_fine_tunes_without_soft_labels(tmp_path):
    argv, paths = recipe_run(
        tmp_path,
        '[train]\nmodel = "tiny"\nepochs = 1\nbatch_size = 8\n'
        '[pseudo]\nrounds = 1\ntrain_on = "none"\nwarm_start = true\n',
    )
    assert pseudo.main([*argv, "--quiet"]) == 0
    run_dir = paths["out"] / "round-1" / "seed-0"
    second = json.loads((run_dir / "metrics.json").read_text())["config"]["train"]
    assert second["init_from"] == str(paths["out"] / "round-0" / "seed-0" / "model.keras")
    assert second["windows"] is None and second["soft_labels"] is None and second["window_labels"] is None
    assert not (run_dir / pseudo.WINDOW_FILE).exists()  # nothing was scored


def test_init_from_a_model_that_does_not_fit_is_one_line(tmp_path):
    from experiments.errors import ExperimentError
    from experiments.train import train
    from synthetic_features import make_feature_set

    feats = make_feature_set(tmp_path / "l", n_recordings=8, per_recording=3, n_classes=3, seed=4)
    train(feats, out=tmp_path / "a", model="tiny", epochs=1, batch_size=8, quiet=True)
    with pytest.raises(ExperimentError, match=r"a/model.keras: init_from: its \d+ weight arrays do not fit"):
        train(feats, out=tmp_path / "b", model="baseline", epochs=1, batch_size=8, quiet=True,
              init_from=tmp_path / "a" / "model.keras")  # fmt: skip
    with pytest.raises(ExperimentError, match=r"nothing.keras: init_from: no such model file"):
        train(
            feats,
            out=tmp_path / "c",
            model="tiny",
            epochs=1,
            batch_size=8,
            quiet=True,
            init_from=tmp_path / "nothing.keras",
        )


def test_paired_batches_take_only_the_training_folds_windows(tmp_path):
    from experiments.sequences import make_sequences
    from synthetic_features import make_feature_set

    labelled = make_feature_set(tmp_path / "l", n_recordings=10, per_recording=3, n_classes=3, seed=4)
    windows = make_feature_set(tmp_path / "w", n_recordings=10, per_recording=4, n_classes=3, kind="windows")
    labels = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    train_seq, val_seq = make_sequences(
        labelled, fold=0, n_folds=5, batch_size=4, seed=0, workers=1, augment=False, mixup=0.0,
        in_memory=False, windows=windows, window_labels=labels,
    )  # fmt: skip
    second = train_seq.second
    assert set(second.recording_id) == set(train_seq.first.recording_id)
    assert not set(second.recording_id) & set(val_seq.recording_id)
    x, y, known = train_seq[0]
    a, b = train_seq.first[0], second[0]
    assert x.shape[0] == a[0].shape[0] + b[0].shape[0]
    np.testing.assert_array_equal(y[len(a[1]) :], labels[second.batch_example_ids(0)])
    assert (known[len(a[1]) :] == 0).all()  # weighted as unknown labels
    assert second.batch_size == train_seq.first.batch_size == 4
    assert train_seq.n_examples == train_seq.first.n_examples + sum(
        len(second.batch_example_ids(i % len(second))) for i in range(len(train_seq))
    )


def test_rounds_refuse_a_loss_that_ignores_soft_labels(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nunknown = "ignore"\n')
    argv = ["--features", "f", "--windows", "w", "--out", str(tmp_path / "o"), "--recipe", str(recipe)]
    assert pseudo.main(argv) == 2
    assert "unknown = 'ignore' leaves out of the loss" in capsys.readouterr().err
    # a control round puts no soft label anywhere: the loss is the recipe's to choose (here the
    # run goes on, and stops at the missing feature set instead)
    recipe.write_text('[train]\nunknown = "ignore"\n[pseudo]\ntrain_on = "none"\nwarm_start = true\n')
    assert pseudo.main(argv) == 2
    err = capsys.readouterr().err
    assert "leaves out of the loss" not in err and "f/index.json: no index" in err


def test_recipe_with_an_unknown_option_is_refused(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text("[train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"r\.toml \[train\]: unknown training option\(s\) learning_rate"):
        pseudo.read_recipe(recipe)
    recipe.write_text("[train]\nlr = 0.1\n[pseudo]\nrounds = -1\n")
    with pytest.raises(ConfigError, match=r"\[pseudo\]: rounds must be an integer >= 0, got -1"):
        pseudo.read_recipe(recipe)
    recipe.write_text('[pseudo]\nteacher = "mean"\n')
    with pytest.raises(ConfigError, match=r"\[pseudo\]: teacher must be one of own, ensemble, got 'mean'"):
        pseudo.read_recipe(recipe)
    recipe.write_text("[pseudo]\nteachers = 2\n")
    with pytest.raises(
        ConfigError, match=r"unknown key\(s\) teachers; known: rounds, train_on, teacher, warm_start, train$"
    ):
        pseudo.read_recipe(recipe)
    recipe.write_text("[pseudo.train]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"\[pseudo.train\]: unknown training option\(s\) learning_rate"):
        pseudo.read_recipe(recipe)


def test_the_shipped_recipe_reads_as_documented():
    options, plan = pseudo.read_recipe(
        Path(__file__).resolve().parent.parent / "experiments/recipes/rfcx-2nd.toml"
    )
    assert options["crop_seconds"] == 8.0 and options["unknown"] == "negative" and options["mixup"] == 0.5
    assert (plan.rounds, plan.train_on, plan.teacher, plan.warm_start) == (3, "windows", "own", True)
    assert dict(plan.train) == {"epochs": 10, "lr": 1e-3, "warmup_epochs": 0.0, "patience": 10}


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("train = 5\n", r"r\.toml \[train\]: expected a table of train\(\) options \(name = value\), got 5$"),
        ("pseudo = 5\n", r"r\.toml \[pseudo\]: expected a table of round settings, got 5$"),
        ("[pseudo]\ntrain = 5\n", r"r\.toml \[pseudo\]: train must be a table of train\(\) options, got 5$"),
        ("[trian]\nlr = 0.1\n", r"r\.toml: unknown key\(s\) trian; known: train, pseudo$"),
        ('[train]\nlr = "x"\n', r"r\.toml \[train\]: lr must be a number, got 'x'$"),
        ("[train]\ninit_from = 5\n", r"r\.toml \[train\]: init_from must be a string, got 5$"),
        ("[train]\nepochs = [1]\n", r"r\.toml \[train\]: epochs must be a single value, got \[1\]$"),
        (
            "[pseudo.train]\naugment = 1\n",
            r"r\.toml \[pseudo\.train\]: augment must be true or false, got 1$",
        ),
        (
            "[train]\nn_folds = 10\nfold = 7\n[pseudo.train]\nn_folds = 5\n",
            r"r\.toml \[pseudo\.train\]: fold must be in \[0, 5\), got 7$",
        ),
    ],
)
def test_recipe_values_of_the_wrong_type_are_one_line_naming_the_key(tmp_path, recipe, message):
    path = tmp_path / "r.toml"
    path.write_text(recipe)
    with pytest.raises(ConfigError, match=message):
        pseudo.read_recipe(path)


def fake_rounds(tmp_path, monkeypatch):
    """A labelled set, fake training (``fake_training``) and ``pseudo.main``'s arguments."""
    import fake_training

    from synthetic_features import make_feature_set

    feats = make_feature_set(tmp_path / "l", n_recordings=4, per_recording=2, n_classes=3)
    argv = ["--features", str(feats), "--windows", "w", "--out", str(tmp_path / "runs")]
    return fake_training.install(monkeypatch), argv + ["--recipe", str(tmp_path / "r.toml")]


def test_a_round_trained_with_other_options_is_trained_again(tmp_path, monkeypatch, capsys):
    fake, argv = fake_rounds(tmp_path, monkeypatch)
    (tmp_path / "r.toml").write_text('[train]\nmodel = "tiny"\nlr = 0.5\n[pseudo]\nrounds = 0\n')
    assert pseudo.main(argv) == 0
    (tmp_path / "r.toml").write_text('[train]\nmodel = "tiny"\n[pseudo]\nrounds = 0\n')
    capsys.readouterr()
    assert pseudo.main(argv) == 0
    err = capsys.readouterr().err
    assert "run 1/1 round 0 seed 0: training again, it was trained with lr 0.5, not 0.005 ..." in err
    run = tmp_path / "runs" / "round-0" / "seed-0"
    assert json.loads((run / "metrics.json").read_text())["config"]["train"]["lr"] == 0.005
    assert fake.trained == [run, run]
    assert pseudo.main(argv) == 0
    assert "run 1/1 round 0 seed 0: val_lwlrap 0.5000 (finished earlier)" in capsys.readouterr().err
    assert len(fake.trained) == 2


def test_a_round_whose_teacher_was_trained_again_is_trained_again(tmp_path, monkeypatch, capsys):
    fake, argv = fake_rounds(tmp_path, monkeypatch)
    recipe = '[pseudo]\nrounds = 1\ntrain_on = "none"\nwarm_start = true\n[pseudo.train]\nepochs = 2\n'
    (tmp_path / "r.toml").write_text("[train]\nepochs = 3\n" + recipe)
    assert pseudo.main(argv) == 0
    runs = tmp_path / "runs"
    assert fake.trained == [runs / "round-0" / "seed-0", runs / "round-1" / "seed-0"]
    # round 1's own options are the same (its epochs are [pseudo.train]'s), its teacher's are not
    (tmp_path / "r.toml").write_text("[train]\nepochs = 4\n" + recipe)
    capsys.readouterr()
    assert pseudo.main(argv) == 0
    err = capsys.readouterr().err
    assert "run 1/2 round 0 seed 0: training again, it was trained with epochs 3, not 4 ..." in err
    assert "run 2/2 round 1 seed 0: training again, a model it learns from was trained again ..." in err
    assert len(fake.trained) == 4
