"""The one atomic writer: a full disk or an OS error is one line naming the path, and no temporary is left."""

import errno

import pytest
import torch

from convscope.errors import ArtifactError
from convscope.io import write_atomic, write_json_atomic
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
