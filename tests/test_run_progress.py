"""``precompute.run``: the progress bar counts the slices a run builds, and is not drawn for none."""

from __future__ import annotations

from audio_fixtures import run_tiny, write_dataset


def test_a_run_with_nothing_to_build_draws_no_progress_bar(tmp_path, capfd):
    paths = write_dataset(tmp_path)
    run_tiny(paths, tmp_path / "out", progress=True)
    first = capfd.readouterr().err
    assert "features -> out: 100%" in first and "9/9" in first
    summary = run_tiny(paths, tmp_path / "out", progress=True)
    assert summary.shards_built == 0
    assert capfd.readouterr().err == ""
