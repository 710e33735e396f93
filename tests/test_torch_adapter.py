"""``loader.torch.ShardDataset``: ShardSequence's batches through a PyTorch DataLoader."""

from __future__ import annotations

import gc
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from synthetic_features import LABELLED_SET, make_feature_set

torch = pytest.importorskip("torch")  # part of the dev install

from loader import ShardSequence  # noqa: E402
from loader.torch import ShardDataset  # noqa: E402
from melshards.errors import ConfigError  # noqa: E402

# Augmentation and mixup on: the batches depend on every draw.
OPTIONS = {
    "split": "train",
    "batch_size": 6,
    "seed": 7,
    "augment": {"mixup_p": 0.5},
    "return_mask": True,
}


@pytest.fixture(scope="module")
def feature_set(tmp_path_factory):
    return make_feature_set(tmp_path_factory.mktemp("torch"), dtype="uint8", **LABELLED_SET)


def sequence_batches(root, epoch: int, **options) -> list[tuple[np.ndarray, ...]]:
    seq = ShardSequence(root, lookahead=False, **{**OPTIONS, **options})
    return [tuple(a.copy() for a in seq.batch(i, epoch=epoch)) for i in range(len(seq))]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_equal_shard_sequence_bit_for_bit(feature_set, num_workers):
    data = ShardDataset(feature_set, **OPTIONS)
    loader = data.loader(num_workers=num_workers, persistent_workers=num_workers > 0)
    for epoch in (0, 3):  # set_epoch reaches persistent workers too
        data.set_epoch(epoch)
        expected = sequence_batches(feature_set, epoch)
        got = list(loader)
        assert len(got) == len(expected) == len(data)
        for tensors, arrays in zip(got, expected, strict=True):
            assert len(tensors) == 3 and all(isinstance(t, torch.Tensor) for t in tensors)
            for tensor, array in zip(tensors, arrays, strict=True):
                assert tensor.dtype == torch.from_numpy(array).dtype
                np.testing.assert_array_equal(tensor.numpy(), array)
    data.close()


def test_two_ranks_cover_the_split_exactly_once(feature_set):
    n = ShardSequence(feature_set, split="train").n_examples
    seen = []
    for rank in (0, 1):
        data = ShardDataset(feature_set, split="train", batch_size=4, seed=1, rank=rank, world_size=2)
        seen.append(np.concatenate([data.batches.batch_example_ids(i, epoch=2) for i in range(len(data))]))
    assert not set(seen[0]) & set(seen[1])
    together = np.concatenate(seen)
    assert together.size == len(set(together)) == 2 * (n // 2)
    assert set(together) <= set(ShardSequence(feature_set, split="train").example_ids)


def test_rank_comes_from_torch_distributed_when_initialised(feature_set, tmp_path, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rendezvous'}")
    try:
        data = ShardDataset(feature_set, split="train", batch_size=4)
        assert (data.batches.rank, data.batches.world_size) == (0, 1)
    finally:
        dist.destroy_process_group()
    with pytest.raises(ConfigError, match="give both rank and world_size"):
        ShardDataset(feature_set, rank=1)


SHM = Path("/dev/shm")

# The id of the process that made it, in the names torch (``torch_PID_RANDOM_N``), multiprocessing
# (``pym-PID-RANDOM``), loky and joblib give what they put in /dev/shm.
CREATOR = re.compile(r"[A-Za-z._]+?[-_](\d+)[-_]")


def shm_names() -> set[str]:
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def made_by(names: set[str], pids: set[int]) -> set[str]:
    """The names in ``names`` that one of the processes ``pids`` made: a test checks what its
    own processes leave, never what other programs on the machine put in /dev/shm meanwhile."""
    return {name for name in names if (m := CREATOR.match(name)) and int(m.group(1)) in pids}


def test_made_by_knows_the_names_of_its_processes_only():
    names = {
        "torch_4321_1817622_0",
        "pym-4322-k2j3x9aa",
        "joblib_memmapping_folder_4321_5f2a_9b1c",
        "torch_99_1_0",
        "loky-99-abc",
        "sem.mp-4321abcd",
        "43210_torch",
    }
    assert made_by(names, {4321, 4322}) == {
        "torch_4321_1817622_0",
        "pym-4322-k2j3x9aa",
        "joblib_memmapping_folder_4321_5f2a_9b1c",
    }


def test_a_dataloader_left_mid_epoch_leaves_no_worker_or_shared_memory(feature_set):
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before_children = {p.pid for p in me.children(recursive=True)}
    before_shm = shm_names()
    data = ShardDataset(feature_set, **OPTIONS)
    batches = iter(data.loader(num_workers=2))
    next(batches)
    workers = {p.pid for p in me.children(recursive=True)} - before_children
    assert len(workers) >= 2  # the workers were running
    ours = {me.pid, *workers}
    # Other programs (a joblib pool of another test run) may put files in /dev/shm meanwhile.
    other = next(pid for pid in range(1, 1 << 22) if pid not in ours)
    unrelated = [SHM / f"loky-{other}-{os.urandom(4).hex()}", SHM / f"torch_{other}_{me.pid}_0"]
    if SHM.is_dir():
        for path in unrelated:
            path.touch()
    try:
        del batches  # left mid-epoch: the iterator shuts its workers down
        gc.collect()

        def alive(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers)
        new = shm_names() - before_shm
        assert made_by(new, ours) == set()
        assert not SHM.is_dir() or {path.name for path in unrelated} <= new
    finally:
        for path in unrelated:
            path.unlink(missing_ok=True)


def test_loader_refuses_options_the_dataset_sets(feature_set):
    data = ShardDataset(feature_set, split="train")
    with pytest.raises(ConfigError, match="batch_size is set by the dataset"):
        data.loader(batch_size=8)


def test_the_training_loop_in_the_docs_runs_as_written(feature_set, capsys):
    # The PyTorch loop of docs/loader.md, verbatim but for the feature set's path.
    doc = (Path(__file__).resolve().parents[1] / "docs" / "loader.md").read_text()
    section = doc[doc.index("## PyTorch") :]
    code = section[
        section.index("```python\n") + len("```python\n") : section.index("```\n", section.index("```python"))
    ]
    assert "features/demo" in code and "data.set_epoch(epoch)" in code
    torch.manual_seed(0)
    exec(compile(code.replace("features/demo", str(feature_set)), "docs/loader.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    epochs, losses = printed[0::2], [float(v) for v in printed[1::2]]
    assert epochs == ["0", "1", "2"] and all(0 < loss < 1 for loss in losses)
