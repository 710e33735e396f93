"""Class folders: a folder's name is its class, as written; the run says which classes came
from which folder, and warns when the audio directory looks one level too high."""

import shutil

import pytest

from audio_fixtures import TINY_FLAGS, read_arrays, write_dataset
from melshards.index import read_index
from precompute.cli import main
from precompute.inputs.classes import ClassCoder, ClassSpec

CONFIG = TINY_FLAGS


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Four 8 s tone recordings, rec0..rec3.flac."""
    return write_dataset(tmp_path_factory.mktemp("tones"))["audio"]


def folders(root, recordings, layout: dict[str, list[str]]):
    """``root`` with each folder of ``layout`` holding copies of the named recordings."""
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy(recordings / f"{name}.flac", root / folder / f"{name}.flac")
    return root


def features(audio_dir, out, *more):
    return main(
        ["features", "--audio-dir", str(audio_dir), "--class-folders", "--out", str(out), *CONFIG, *more]
    )


def test_folder_names_are_class_names_as_written(recordings, tmp_path, capsys):
    audio = folders(tmp_path / "clips", recordings, {"3": ["rec0"], "03": ["rec1"], "s3": ["rec2"]})
    assert features(audio, tmp_path / "out") == 0
    index, data = read_index(tmp_path / "out"), read_arrays(tmp_path / "out")
    assert index.class_names == ("03", "3", "s3")
    got = {
        rid: index.class_names[k]
        for rid, k in zip(data["recording_id"].astype(str), data["anchor/species_id"], strict=True)
    }
    assert got == {"3/rec0": "3", "03/rec1": "03", "s3/rec2": "s3"}
    err = capsys.readouterr().err
    assert f"classes from folder names under {audio}: 03, 3, s3 (3 files)\n" in err


def test_two_folders_naming_one_class_are_refused_with_both_names(recordings, tmp_path, capsys):
    audio = folders(tmp_path / "clips", recordings, {"wren": ["rec0"], "wren ": ["rec1"]})
    assert features(audio, tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"precompute features: error: {audio}: class folders 'wren' and 'wren ' both name class 'wren'; "
        "rename one of them or merge them"
    )


def test_a_folder_name_is_never_an_id():
    coder = ClassCoder(ClassSpec(count=4))
    assert coder.code("3", 0) == 3  # a manifest's id 3: class s3
    assert coder.code("s3", 0, verbatim=True) == 3
    with pytest.raises(ValueError, match=r"^class '3' is not in the class list s0..s3 \(n_classes 4\)$"):
        coder.code("3", 0, verbatim=True)
    given = ClassCoder(ClassSpec(names=("3", "s3")))
    assert (given.code("3", 0, verbatim=True), given.code("3", 0)) == (0, 1)


def test_an_audio_dir_one_level_too_high_is_named_with_the_fix(recordings, tmp_path, capsys):
    layout = {"train/wren": ["rec0"], "train/piha": ["rec1"], "test/wren": ["rec2"], "notes": []}
    audio = folders(tmp_path / "data", recordings, layout)
    assert features(audio, tmp_path / "out") == 0
    err = capsys.readouterr().err.splitlines()
    assert f"classes from folder names under {audio}: test, train (3 files)" in err
    assert f"{audio}: class folder(s) notes hold no audio files and give no class" in err
    assert (
        f"{audio}: the class folders hold no audio of their own, only in sub-folders (test/wren, "
        f"train/piha, train/wren); if the classes are those sub-folders, give the folder above them "
        f"as --audio-dir (such as {audio / 'test'})"
    ) in err
    # Pointed at the classes themselves: no warning.
    assert features(audio / "train", tmp_path / "train") == 0
    err = capsys.readouterr().err
    assert f"classes from folder names under {audio / 'train'}: piha, wren (2 files)" in err
    assert "sub-folders" not in err and read_index(tmp_path / "train").class_names == ("piha", "wren")


def test_class_folders_without_audio_are_refused(tmp_path, capsys):
    (tmp_path / "clips" / "wren").mkdir(parents=True)
    (tmp_path / "clips" / "piha").mkdir()
    assert features(tmp_path / "clips", tmp_path / "out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"precompute features: error: {tmp_path / 'clips'}: no audio files (.flac, .wav, .ogg, .mp3, "
        ".aiff, .aif) in the class folders piha, wren"
    )
