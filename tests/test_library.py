import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vidbooth import library
from vidbooth.errors import UserError


def _write(stage, value=1.0, name="S*"):
    save_file({"w": torch.full((3,), value)}, str(stage / "adapter.safetensors"))
    library.write_json(stage / library.MANIFEST, {"name": name, "kind": "subject"})


def test_names_and_folder_encoding():
    assert library.dir_name("S*") == "S%2A" and library.dir_name("sks_dog-2") == "sks_dog-2"
    assert library.validate_name("S*") == "S*"
    for bad in ["", "a/b", "a\\b", "..", ".hidden", "x" * 65, "a b", 'a"b', "a:b", "a?b", "a|b"]:
        with pytest.raises(UserError, match="invalid subject name"):
            library.validate_name(bad)


def test_artifact_appears_only_when_complete(isolated_home):
    with pytest.raises(RuntimeError):
        with library.staged_artifact("subject", "S*") as stage:
            _write(stage)
            raise RuntimeError("crash while writing")
    assert library.list_artifacts("subject") == []
    assert not any((isolated_home / ".staging").iterdir())
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    [manifest] = library.list_artifacts("subject")
    assert manifest["name"] == "S*" and manifest["schema_version"] == library.SCHEMA_VERSION
    assert set(manifest["files"]) == {"adapter.safetensors"}


def test_existing_needs_overwrite_and_overwrite_replaces():
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage, 1.0)
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        library.check_free("subject", "S*", overwrite=False)
    with library.staged_artifact("subject", "S*", overwrite=True) as stage:
        _write(stage, 2.0)
    path = library.artifact_dir("subject", "S*")
    from safetensors.torch import load_file

    assert load_file(str(path / "adapter.safetensors"))["w"][0] == 2.0
    assert not any((library.library_home() / ".trash").iterdir())


def test_unknown_name_lists_known_ones():
    with library.staged_artifact("subject", "dog") as stage:
        _write(stage, name="dog")
    with pytest.raises(UserError, match="unknown subject 'cat'.*known subjects: dog"):
        library.artifact_dir("subject", "cat")
    with pytest.raises(UserError, match="no motions yet"):
        library.artifact_dir("motion", "M")


def test_interrupted_swap_rolls_back_to_old_version(isolated_home):
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage, 1.0)
    live = library.artifact_dir("subject", "S*")
    # simulate SIGKILL after the old version was moved aside and before the new one was renamed in
    aside = isolated_home / ".trash" / f"subjects__{live.name}.12345.abcdef01"
    aside.parent.mkdir(parents=True)
    os.replace(live, aside)
    (isolated_home / ".staging" / f"{live.name}.999999999.deadbeef").mkdir(parents=True)  # dead writer
    library.recover()
    assert (live / library.MANIFEST).is_file()
    assert not any(aside.parent.iterdir()) and not any((isolated_home / ".staging").iterdir())


def test_tampered_or_damaged_artifacts_are_refused():
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    path = library.artifact_dir("subject", "S*")
    save_file({"w": torch.zeros(3)}, str(path / "adapter.safetensors"))
    with pytest.raises(UserError, match="does not match its manifest hash"):
        library.read_manifest(path)
    (path / "adapter.safetensors").unlink()
    with pytest.raises(UserError, match="does not match its manifest"):
        library.read_manifest(path)
    manifest = json.loads((path / library.MANIFEST).read_text())
    manifest["schema_version"] = library.SCHEMA_VERSION + 1
    (path / library.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="newer than this vidbooth"):
        library.read_manifest(path)
    (path / library.MANIFEST).write_text("{broken")
    with pytest.raises(UserError, match="not valid JSON"):
        library.read_manifest(path)


def test_lock_refuses_a_live_owner_and_takes_over_a_dead_one(isolated_home):
    with library.artifact_lock("subject", "S*") as lock:
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(UserError, match="being trained by another process"):
            with library.artifact_lock("subject", "S*"):
                pass
    assert not lock.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(dead.stdout.strip())  # stale lock of a process that has exited
    with library.artifact_lock("subject", "S*"):
        assert lock.read_text() == str(os.getpid())


def test_a_lock_never_exists_without_its_owners_pid(isolated_home, monkeypatch):
    """Taken by a hard link to a file already holding the pid: another process can never read an empty lock
    (no owner) and take it over while its owner is still writing the pid."""
    seen = []
    real_link = os.link

    def link_and_look(src, dst):
        real_link(src, dst)
        seen.append(Path(dst).read_text())  # what a second process would read the instant the lock appears

    monkeypatch.setattr(os, "link", link_and_look)
    with library.artifact_lock("motion", "M") as lock:
        assert seen == [str(os.getpid())] and lock.read_text() == str(os.getpid())
        assert sorted(p.name for p in lock.parent.iterdir()) == [lock.name]  # no temporary file left


def test_a_lock_is_taken_without_hard_links_too(isolated_home, monkeypatch):
    """On a filesystem without hard links: exclusive create, then the pid; a second taker is refused."""

    def no_links(src, dst):
        raise PermissionError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    with library.artifact_lock("motion", "M") as lock:
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(UserError, match="being trained by another process"):
            with library.artifact_lock("motion", "M"):
                pass
        assert sorted(p.name for p in lock.parent.iterdir()) == [lock.name]
    assert not lock.exists()
