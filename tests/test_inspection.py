"""``precompute inspect`` on a synthetic feature set whose every stored value is known."""

import re

from precompute.cli import main
from precompute.inspection import WIDTH, inspect_lines


def test_inspect_fits_100_columns_and_prints_the_real_values(feats, table):
    lines = inspect_lines(feats)
    assert max(len(line) for line in lines) <= WIDTH == 100
    text = "\n".join(lines)
    assert "examples     40 from 10 recordings in 5 shards" in text
    assert "example      mel (16, 151) float16: 16 mel bands x 151 frames (1.5 s)" in text
    assert "model input  (16, 101, 1): 1 s, cropped inside 0.25 s of context on each side" in text
    # The resolved config: every parameter with its value and unit.
    assert re.search(r"^  sample_rate +16000  Hz +audio is resampled", text, re.M)
    assert re.search(r"^  hop_length +160  samples +step between STFT frames", text, re.M)
    assert re.search(r"^  n_mels +16  bands ", text, re.M)
    assert re.search(r"^  top_db +80  dB ", text, re.M)
    assert re.search(r"^  compression +none  filter ", text, re.M)
    # The class table, two classes per line, named: counts from the labels themselves.
    labels = table["labels"]
    for c in range(4):
        pos, fp, unknown = ((labels[:, c] == v).sum() for v in (1, 0, -1))
        recs = len(set(table["rid"][labels[:, c] == 1]))
        assert re.search(rf"(^|    ) +{c} s{c} +{pos} +{fp} +{unknown} +{recs}( |$)", text, re.M), c
    assert "classes      4: s0, s1, s2, s3" in text
    multi = int(((labels == 1).sum(axis=1) > 1).sum())
    assert f"examples with more than one positive class: {multi} of 40" in text


def test_cli_inspect_of_a_missing_feature_set_is_one_line_with_status_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"precompute inspect: error: {tmp_path / 'nope' / 'index.json'}: no index; not a finished feature set\n"
    )
