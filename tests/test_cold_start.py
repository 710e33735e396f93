"""The kernels' warm-up thread: started by ``import loader``, finished, and safe to fork around."""

from __future__ import annotations

from reference import run_python
from synthetic_features import LABELLED_SET, make_feature_set


def test_import_loads_the_readers_kernels_in_a_background_thread():
    done = run_python(
        """
        import threading
        import loader
        from loader import read_kernels
        assert read_kernels._warming is not None and read_kernels._warming.name == "melshards-kernel-warmup"
        read_kernels._warming.join()
        # every kernel a batch needs is loaded, for read-only (memory-mapped) sources
        loaded = {name: [str(s) for s in getattr(read_kernels, name).signatures]
                  for name in ("gather_crop", "gather_codes", "first_bad_chunk", "mask_bands")}
        assert all(loaded.values()), loaded
        assert any("uint8, 1, 'C', True" in s for s in loaded["gather_codes"]), loaded
        print("ok", threading.active_count())
        """
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["ok", "1"]  # the warm-up thread has ended


def test_a_fork_while_the_kernels_warm_up_waits_for_them_and_the_child_reads(tmp_path):
    root = make_feature_set(tmp_path / "set", dtype="uint8", **LABELLED_SET)
    done = run_python(
        """
        import os, sys
        import numpy as np
        import loader  # the warm-up thread is running now
        pid = os.fork()
        if pid == 0:
            seq = loader.ShardSequence(sys.argv[1], split="all", batch_size=4, seed=1)
            x = seq[0][0]
            os._exit(0 if x.shape == (4, 16, seq.crop_frames, 1) and np.isfinite(x).all() else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
        str(root),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["child", "0"]


def test_a_shard_replaced_after_the_set_was_opened_is_refused_not_read(tmp_path):
    # Mapping a shard checks only that it is the file checked at open (device, inode, size):
    # a shard rebuilt or swapped in since is refused instead of read against stale metadata.
    import numpy as np
    import pytest

    from loader import MelReader, open_feature_set
    from melshards.errors import FormatError

    root = make_feature_set(tmp_path / "set", dtype="uint8", **LABELLED_SET)
    other = make_feature_set(tmp_path / "other", dtype="uint8", seed=5, **LABELLED_SET)
    features = open_feature_set(root)
    layout = features.shards[2]
    (other / layout.path.name).replace(layout.path)  # same name and size, another file
    out = np.empty((1, features.config.n_mels, features.config.n_frames, 1), dtype=np.float32)
    reader = MelReader(features)
    reader.read(np.array([0]), np.zeros(1, dtype=np.int64), out)  # shard 0 is untouched
    with pytest.raises(FormatError, match="shard was replaced since the feature set was opened"):
        reader.read(np.array([layout.first]), np.zeros(1, dtype=np.int64), out)
