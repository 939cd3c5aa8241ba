"""The one atomic writer: a full disk or an OS error is one line naming the path, and no temporary is left."""

import errno

import numpy as np
import pytest
import torch

from convscope.errors import ArtifactError
from convscope.io import read_artifact, write_atomic, write_json_atomic, write_npz_atomic
from convscope.training import save_atomic


class _FullDisk:
    """A file whose writes fail as a full disk does, after some bytes went through."""

    def __init__(self, file):
        self.file = file

    def __getattr__(self, name):
        return getattr(self.file, name)

    def write(self, data):
        self.file.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_names_the_path_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out" / "metrics.json"
    with pytest.raises(ArtifactError, match=rf"cannot write '{target}': No space left on device; free space"):
        write_atomic(target, lambda f: _FullDisk(f).write(b"x" * 100))
    assert list(target.parent.iterdir()) == []


def test_full_disk_while_saving_a_checkpoint(tmp_path, monkeypatch):
    # Both torch.save to a file and the buffered write below report ENOSPC; ours names the cause and cleans up.
    import convscope.io as io_module

    real = io_module.tempfile.NamedTemporaryFile
    monkeypatch.setattr(io_module.tempfile, "NamedTemporaryFile", lambda **kw: _Wrapped(real(**kw)))
    with pytest.raises(ArtifactError, match="resume.pt': No space left on device"):
        save_atomic({"w": torch.zeros(1000)}, tmp_path / "resume.pt")
    assert list(tmp_path.iterdir()) == []


class _Wrapped(_FullDisk):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_failing_writer_keeps_its_error_and_removes_the_temporary(tmp_path):
    def bug(f):
        f.write(b"half")
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        write_atomic(tmp_path / "x.bin", bug)
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_round_trips(tmp_path):
    path = write_json_atomic(tmp_path / "a" / "b.json", {"k": [1, 2]})
    assert path.read_text() == '{\n "k": [\n  1,\n  2\n ]\n}\n'
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_artifacts_read_back_and_a_missing_or_broken_one_names_the_step_to_rerun(tmp_path):
    write_json_atomic(tmp_path / "a.json", {"n": [1, 2]})
    write_npz_atomic(tmp_path / "a.npz", x=np.arange(3), names=np.asarray(["p", "q"]))
    assert read_artifact(tmp_path / "a.json", "evaluate") == {"n": [1, 2]}
    arrays = read_artifact(tmp_path / "a.npz", "explain")
    assert arrays["x"].tolist() == [0, 1, 2] and arrays["names"].tolist() == ["p", "q"]
    (tmp_path / "broken.json").write_text('{"n": ')
    (tmp_path / "broken.npz").write_bytes(b"PK not a zip")
    cases = [
        ("missing.json", "not found; run the evaluate step"),
        ("broken.json", "cannot be read .*rerun the evaluate step"),
        ("broken.npz", "cannot be read .*rerun the evaluate step"),
    ]
    for name, message in cases:
        with pytest.raises(ArtifactError, match=message) as error:
            read_artifact(tmp_path / name, "evaluate")
        assert "\n" not in str(error.value) and name in str(error.value)
