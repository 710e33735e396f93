"""Presets shipped as TOML, TOML files, ``--set`` overrides and their precedence."""

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from melshards.config import PARAMETERS, FeatureConfig, parameter_names
from melshards.errors import ConfigError
from precompute.cli import main
from precompute.config_files import (
    config_toml,
    load_config,
    parameter_table,
    parse_set,
    preset,
    preset_names,
    preset_text,
    preset_values,
)

ROOT = Path(__file__).resolve().parents[1]
FIELDS = [f.name for f in dataclasses.fields(FeatureConfig)]


def test_the_default_preset_is_the_feature_config_defaults():
    assert preset_values("default") == {}
    assert preset("default") == FeatureConfig()
    assert preset("default").fingerprint() == FeatureConfig().fingerprint()
    # Its text is generated from the fields: every parameter, with its default, unit and meaning.
    text = preset_text("default")
    assert tomllib.loads(text) == {
        k: ("none" if v is None else v) for k, v in FeatureConfig().to_dict().items()
    }
    for name, (unit, meaning) in PARAMETERS.items():
        assert re.search(rf"^{name} +=.*# {re.escape(unit)}: {re.escape(meaning)}$", text, re.M), name


def test_shipped_presets_and_what_they_change():
    assert preset_names() == ("default", "fast", "rfcx-2nd", "seed")
    assert preset_values("seed") == {
        "fmin": 0.0,
        "fmax": 24000.0,
        "db": "amplitude",
        "context": 0.0,
        "stft": "librosa",
        "share_frames": False,
    }
    assert preset_values("fast") == {"n_mels": 64, "hop_length": 1024}
    assert preset_values("rfcx-2nd") == {
        "n_fft": 4096,
        "hop_length": 512,
        "n_mels": 256,
        "duration": 8.0,
        "context": 1.0,
    }
    rfcx = preset("rfcx-2nd")
    assert rfcx.preset == "rfcx-2nd" and rfcx.sample_rate == 48000 and rfcx.fmax == 16000.0
    # 8 s + 2 x 1 s stored at hop 512: 1 + 480000 // 512 frames.
    assert rfcx.n_frames == 938 and rfcx.crop_frames == 751


def test_every_parameter_is_documented_with_a_unit_everywhere():
    assert list(PARAMETERS) == FIELDS == list(parameter_names())
    assert all(unit and meaning for unit, meaning in PARAMETERS.values())
    for name in preset_names():
        for line in preset_text(name).splitlines():
            if re.match(r"^[a-z_]+ *=", line):
                key = line.split("=")[0].strip()
                assert "#" in line and len(line.split("#", 1)[1].strip()) >= 10, f"{name}.toml: {key}"
    # docs/presets.md carries the table generated from the FeatureConfig fields, unedited.
    presets_doc = (ROOT / "docs" / "presets.md").read_text()
    assert parameter_table() in presets_doc
    for name in preset_names():
        assert f"`{name}`" in presets_doc, f"docs/presets.md does not describe preset {name}"


def test_presets_are_package_data():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["precompute"]
    shipped = {p.name for pattern in patterns for p in (ROOT / "precompute").glob(pattern)}
    assert shipped == {f"{name}.toml" for name in preset_names() if name != "default"}


def test_set_values_take_the_parameter_type():
    assert parse_set(["n_mels=96", "fmax=12000", "top_db=none", "compression=gzip", "db_ref=1e-3"]) == {
        "n_mels": 96,
        "fmax": 12000.0,
        "top_db": None,
        "compression": "gzip",
        "db_ref": 0.001,
    }
    assert type(parse_set(["fmax=12000"])["fmax"]) is float
    assert parse_set(["n_mels=96", "n_mels=64"]) == {"n_mels": 64}  # the last one wins


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (
            "nmels=96",
            r"^--set nmels=96: unknown parameter 'nmels'; valid keys: preset, sample_rate, .*shard_size$",
        ),
        ("n_mels=many", r"^--set n_mels=many: n_mels must be an integer \(bands\)$"),
        ("fmax=high", r"^--set fmax=high: fmax must be a number \(Hz\)$"),
        ("n_mels", r"^--set 'n_mels': expected key=value, e.g. --set n_mels=96$"),
    ],
)
def test_set_errors_name_the_item(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_set([item])


def test_precedence_preset_then_file_then_set(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text('preset = "seed"\nn_mels = 96\nhop_length = 256\n')
    config = load_config(path, overrides=parse_set(["n_mels=64"]))
    assert config.preset == "seed"
    assert config.fmin == 0.0 and config.db == "amplitude"  # from the preset
    assert config.hop_length == 256  # from the file
    assert config.n_mels == 64  # --set wins over the file
    # --preset picks another base; the file's values still win over it.
    config = load_config(path, preset="fast")
    assert (config.preset, config.n_mels, config.hop_length, config.fmin) == ("fast", 96, 256, 50.0)
    # A [features] table works the same.
    path.write_text('[features]\npreset = "rfcx-2nd"\nduration = 4.0\n')
    config = load_config(path)
    assert (config.n_mels, config.duration, config.context) == (256, 4.0, 1.0)


def test_integers_in_toml_give_the_same_config_as_floats(tmp_path):
    (tmp_path / "a.toml").write_text("fmin = 50\nfmax = 16000\ntop_db = 80\n")
    (tmp_path / "b.toml").write_text("fmin = 50.0\nfmax = 16000.0\ntop_db = 80.0\n")
    a, b = load_config(tmp_path / "a.toml"), load_config(tmp_path / "b.toml")
    assert a == b == FeatureConfig()
    assert a.fingerprint() == b.fingerprint() == FeatureConfig().fingerprint()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'preset = "huge"\n',
            r"my\.toml: unknown preset 'huge'; known presets: default, fast, rfcx-2nd, seed",
        ),
        ("n_mel = 96\n", r"my\.toml: unknown feature parameter\(s\) n_mel; valid keys: preset, "),
        ("n_mels = \n", r"my\.toml: invalid TOML"),
        ("fmax = 30000.0\n", r"config needs 0 <= fmin < fmax <= sample_rate/2, got fmin=50\.0 fmax=30000\.0"),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, text, message):
    (tmp_path / "my.toml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "my.toml")


def test_config_toml_reads_back_to_the_same_config(tmp_path):
    for name in preset_names():
        config = preset(name, shard_size=8, top_db=None)
        (tmp_path / "c.toml").write_text(config_toml(config))
        assert load_config(tmp_path / "c.toml") == config


def test_cli_config_prints_the_resolved_config(tmp_path, capsys):
    assert main(["config", "--preset", "rfcx-2nd", "--set", "n_mels=128", "--set", "top_db=none"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^n_mels\s+= 128\s+# bands: ", text, re.M)
    assert re.search(r"^n_fft\s+= 4096\s+# samples: ", text, re.M)
    (tmp_path / "c.toml").write_text(text)
    assert load_config(tmp_path / "c.toml") == preset("rfcx-2nd", n_mels=128, top_db=None)
    assert main(["config", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == ["default", "fast", "rfcx-2nd", "seed"]
    assert listed[1] == "fast       n_mels=64, hop_length=1024"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "nmels=96"], "--set nmels=96: unknown parameter 'nmels'; valid keys: preset, "),
        (["--config", "missing.toml"], "missing.toml: config file not found"),
        (["--preset", "huge"], "unknown preset 'huge'; known presets: default, fast, rfcx-2nd, seed"),
    ],
)
def test_cli_config_errors_are_one_line_with_status_2(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    argv = ["features", "--audio-dir", str(tmp_path), "--tp", str(tmp_path / "tp.csv"), "--out", str(out)]
    assert main([*argv, *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("precompute features: error: ")
    assert message in captured.err and captured.err.count("\n") == 1
    assert not out.exists()


def test_an_invalid_combination_names_the_layers_it_came_from(tmp_path):
    (tmp_path / "my.toml").write_text('preset = "seed"\nfmin = 100.0\n')
    with pytest.raises(
        ConfigError,
        match=r"^preset seed \+ \S+my\.toml \+ fmax=90\.0: config needs 0 <= fmin < fmax <= sample_rate/2, "
        r"got fmin=100\.0 fmax=90\.0 sample_rate=48000; set fmin below fmax \(for instance --set fmin=45\)$",
    ):
        load_config(tmp_path / "my.toml", overrides=parse_set(["fmax=90"]))


def test_a_band_beyond_the_sample_rate_says_which_fmax_to_set():
    with pytest.raises(
        ConfigError,
        match=r"fmax=16000\.0 sample_rate=22050; set fmax <= 11025 \(for instance --set fmax=11025\), "
        r"or raise sample_rate$",
    ):
        load_config(overrides=parse_set(["sample_rate=22050"]))
    assert load_config(overrides=parse_set(["sample_rate=22050", "fmax=11025"])).fmax == 11025.0
