"""The code fingerprints' scan cache (convscope.codedeps.scan_cache): used while a file is unchanged, never stale."""

from __future__ import annotations

import json
import shutil

from conftest import REPO

from convscope import codedeps

BY_NAME = {"convscope.data": ["convscope.data.shapes"]}


def test_the_scan_cache_is_used_only_for_unchanged_files(tmp_path):
    script = tmp_path / "train.py"
    shutil.copy(REPO / "rules/scripts/train.py", script)  # written just now: too recent to be stored
    cache = tmp_path / ".snakemake/scans.json"
    plain = codedeps.fingerprint(script, BY_NAME)
    with codedeps.scan_cache(cache):
        assert codedeps.fingerprint(script, BY_NAME) == plain
    files = json.loads(cache.read_text())["files"]
    assert str(codedeps.PACKAGE_DIR / "training.py") in files and str(script) not in files

    for entry in files.values():  # a stored digest is what the next run uses while the file's stat matches ...
        entry["digest"] = "0" * 64
    cache.write_text(json.dumps({"format": 1, "files": files}))
    with codedeps.scan_cache(cache):
        assert codedeps.fingerprint(script, BY_NAME) != plain
    for entry in files.values():  # ... and not once the stat differs (an edit, a copy, a touch)
        entry["stat"][2] -= 1
    cache.write_text(json.dumps({"format": 1, "files": files}))
    with codedeps.scan_cache(cache):
        assert codedeps.fingerprint(script, BY_NAME) == plain


def test_an_unreadable_or_unwritable_scan_cache_only_costs_time(tmp_path):
    script = REPO / "rules/scripts/evaluate.py"
    plain = codedeps.fingerprint(script, BY_NAME)
    (tmp_path / "truncated.json").write_text('{"format": 1, "files": {')
    malformed = {str(script): {"stat": 3}, str(codedeps.PACKAGE_DIR / "jobs.py"): [1], "x": None}
    (tmp_path / "malformed.json").write_text(json.dumps({"format": 1, "files": malformed}))
    (tmp_path / "folder.json").mkdir()
    for cache in ("truncated.json", "malformed.json", "folder.json"):
        with codedeps.scan_cache(tmp_path / cache):
            assert codedeps.fingerprint(script, BY_NAME) == plain
    assert (tmp_path / "folder.json").is_dir()
