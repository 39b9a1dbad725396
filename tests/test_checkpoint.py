"""Checkpoint writes: what a failed or killed write leaves behind."""
import pytest
import torch

from rlvr.train import checkpoint


def test_a_failed_write_and_a_killed_one_leave_no_partial_directory(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    checkpoint.save_checkpoint(root, 1, {"x": torch.zeros(3)}, keep=2)
    killed = root / f".tmp-{checkpoint.PREFIX}000002-99999"  # a write killed midway, by another process
    killed.mkdir()
    (killed / "state.pt").write_bytes(b"partial")

    def full_disk(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(root, 3, {"x": torch.zeros(3)}, keep=2)
    assert sorted(path.name for path in root.iterdir()) == [f"{checkpoint.PREFIX}000001"]
    assert checkpoint.list_checkpoints(root) == [root / f"{checkpoint.PREFIX}000001"]
