import json
import os
import re
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
    # 43 letters, but 258 bytes once percent-encoded: past what a file name may hold with its lock's suffix
    with pytest.raises(UserError, match="too long as a folder name .258 characters.*at most 180"):
        library.validate_name("é" * 43)
    with library.staged_artifact("subject", "é" * 30) as stage:  # the longest that fits: 180 characters
        library.write_json(stage / library.MANIFEST, {"kind": "subject", "name": "é" * 30})
    assert library.artifact_dir("subject", "é" * 30).is_dir()


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


def test_names_at_rest_are_read_without_touching_or_telling(isolated_home, monkeypatch, capsys):
    """For generate's hint: readable artifacts' names; a damaged one, a staging folder and a library that is a file
    are passed over in silence, and nothing is rolled back or removed (list_artifacts recovers)."""
    for name in ("S*", "dog"):
        with library.staged_artifact("subject", name) as stage:
            _write(stage, name=name)
    (isolated_home / "subjects" / "cat").mkdir()  # no manifest
    staged = isolated_home / ".staging" / f"subjects__x.{library._host_tag()}-999999999.ab"  # of a process gone
    staged.mkdir(parents=True)
    assert library.names_at_rest("subject") == ["S*", "dog"] and library.names_at_rest("motion") == []
    assert staged.is_dir() and capsys.readouterr().err == ""
    home = isolated_home.parent / "a-file"
    home.write_text("")
    monkeypatch.setenv("VIDBOOTH_HOME", str(home))
    assert library.names_at_rest("subject") == []


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


def test_entries_written_from_another_machine_are_left_to_it_until_stale(isolated_home, monkeypatch):
    """A library shared over the network: a swap or save in flight on another machine carries a pid that means
    nothing here, so it is left alone while recent, and cleaned up once stale."""
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage, 1.0)
    live = library.artifact_dir("subject", "S*")
    assert library._host_tag() != "0ther0ne"
    aside = isolated_home / ".trash" / f"subjects__{live.name}.0ther0ne-1.abcdef01"  # pid 1 is alive here
    aside.parent.mkdir(parents=True)
    os.replace(live, aside)
    staging = isolated_home / ".staging" / f"{live.name}.0ther0ne-999999999.deadbeef"  # dead here, maybe not there
    staging.mkdir(parents=True)
    library.recover()
    assert aside.is_dir() and staging.is_dir() and not live.exists()
    monkeypatch.setattr(library, "FOREIGN_WRITER_SECONDS", 0)
    library.recover()
    assert (live / library.MANIFEST).is_file() and not aside.exists() and not staging.exists()


def test_tampered_or_damaged_artifacts_are_refused():
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    path = library.artifact_dir("subject", "S*")
    save_file({"w": torch.zeros(3)}, str(path / "adapter.safetensors"))
    with pytest.raises(UserError, match=r"does not match its manifest hash \(modified or damaged\): retrain it "
                                        r"\(vidbooth train-subject \.\.\. --name 'S\*' --overwrite\), or delete "
                                        r".*S%2A$"):
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
    with pytest.raises(UserError, match=r"is not valid JSON \(damaged\): retrain it \(vidbooth train-subject"):
        library.read_manifest(path)
    (path / library.MANIFEST).unlink()  # no manifest: --overwrite would not replace the folder, so it is not told to
    with pytest.raises(UserError, match=r"has no manifest.json, so it is no complete vidbooth artifact: move it out"):
        library.read_manifest(path)


def test_manifest_values_of_another_type_are_one_error_naming_the_key():
    """A hand-edited manifest ('class_noun': 5, 'stages': "x") had been a TypeError or AttributeError traceback where
    the engine used the value, and a schema_version "1" was called newer than this vidbooth."""
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    path = library.artifact_dir("subject", "S*")
    sealed = json.loads((path / library.MANIFEST).read_text())
    good = {"base": "nano", "base_fingerprint": "f1", "image_fingerprint": None, "class_noun": "dog", "num_vectors": 2,
            "token": "S*", "tokens": ["S*", "S*_1"], "stages": {"identity": {"steps": 3}},
            "paths": {"embeddings": None, "identity_adapter": None, "config": None}}

    def with_value(**changed):
        (path / library.MANIFEST).write_text(json.dumps(sealed | good | changed))
        return path

    assert library.read_manifest(with_value())["num_vectors"] == 2
    for key, value, what in [("class_noun", 5, "text"), ("class_noun", None, "text"), ("base", "", "text"),
                             ("num_vectors", "1", "a whole number of at least 1"), ("num_vectors", True, "a whole"),
                             ("num_vectors", 0, "a whole"), ("tokens", ["S*", 3], "a list of texts"),
                             ("stages", "x", "a mapping of stage to mapping"), ("image_fingerprint", 7, "text or null"),
                             ("schema_version", "1", "a whole number of at least 1"), ("schema_version", 0, "a whole")]:
        with pytest.raises(UserError, match=rf"manifest .*: {key} is {re.escape(json.dumps(value))}, not {what}.* "
                                            r"\(damaged, or edited by hand\): retrain it \(vidbooth train-subject"):
            library.read_manifest(with_value(**{key: value}))
    assert library.read_manifest(with_value(), verify=False)["class_noun"] == "dog"
    with library.staged_artifact("motion", "M") as stage:  # a motion learned without a class noun records null
        library.write_json(stage / library.MANIFEST, {"name": "M", "kind": "motion"})
    motion = library.artifact_dir("motion", "M")
    sealed = json.loads((motion / library.MANIFEST).read_text()) | {
        "base": "nano", "base_fingerprint": "f1", "paths": {"motion_adapter": None, "config": None}}
    for class_noun in (None, "", "dog", 5):
        (motion / library.MANIFEST).write_text(json.dumps(sealed | {"class_noun": class_noun}))
        if class_noun == 5:
            with pytest.raises(UserError, match=r"class_noun is 5, not text or null \(damaged.*train-motion"):
                library.read_manifest(motion)
        else:
            assert library.read_manifest(motion)["class_noun"] == class_noun


def test_the_library_folder_is_absolute_with_a_relative_or_tilde_home(tmp_path, monkeypatch, capsys):
    """A relative VIDBOOTH_HOME had stayed relative: `list` said 'nothing in the library libr' and `list --json`
    gave paths that break from another folder; a '~' no shell expanded had named a folder called '~'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    for given, expected in (("~/lib", tmp_path / "lib"), ("libr", tmp_path / "libr")):
        monkeypatch.setenv("VIDBOOTH_HOME", given)
        assert library.library_home() == expected
    from vidbooth.engine.backbone import cache_dir

    monkeypatch.setenv("VIDBOOTH_CACHE", "cache")
    assert cache_dir() == tmp_path / "cache"
    with monkeypatch.context() as env:  # the XDG spec: a relative XDG_DATA_HOME is ignored
        env.delenv("VIDBOOTH_HOME")
        for data, expected in (("data", tmp_path / ".local" / "share"), (str(tmp_path / "xdg"), tmp_path / "xdg")):
            env.setenv("XDG_DATA_HOME", data)
            assert library.library_home() == expected / "vidbooth"
    from vidbooth.cli.app import main

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    assert main(["--home", "rel", "list"]) == 0
    assert f"nothing in the library {tmp_path / 'rel'}: learn one" in capsys.readouterr().err


def test_lock_refuses_a_holder_and_is_free_again_when_it_is_released(isolated_home):
    with library.artifact_lock("subject", "S*") as lock:
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(UserError, match=rf"being trained by another process \(pid {os.getpid()}\)"):
            with library.artifact_lock("subject", "S*"):
                pass
    assert not lock.exists() and not isolated_home.exists()  # the library it created is removed again, empty
    lock.parent.mkdir(parents=True)
    lock.write_text("999999")  # a lock file left behind, not locked by anyone: not a holder
    with library.artifact_lock("subject", "S*"):
        assert lock.read_text() == str(os.getpid())


_HOLD_LOCK = """
import sys, time
from vidbooth import library
with library.artifact_lock("motion", "M"):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_lock_whose_holder_was_killed_is_free_at_once(isolated_home):
    """The operating system releases the lock when its holder dies (here SIGKILL, which skips every cleanup)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"another process \(pid {holder.pid}\)"):
            with library.artifact_lock("motion", "M"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with library.artifact_lock("motion", "M") as lock:
        assert lock.read_text() == str(os.getpid())


def test_a_lock_file_removed_by_its_last_holder_is_not_the_one_taken(isolated_home, monkeypatch):
    """A taker that opened the lock file just before its holder released and removed it locks a file no longer
    in the folder; it must notice and lock the file at the path, where a third process could otherwise take a
    second lock at the same time."""
    (isolated_home / ".locks").mkdir(parents=True)
    lock = isolated_home / ".locks" / "motions__M.lock"
    removed = isolated_home / ".locks" / "removed"
    real_open = os.open
    opened = []

    def open_the_removed_file_first(path, flags, *args):
        if Path(path) != lock:
            return real_open(path, flags, *args)
        opened.append(Path(path).name)
        if len(opened) == 1:
            removed.write_text("123")
            fd = real_open(removed, flags, *args)
            removed.unlink()  # its holder removed it as it finished
            return fd
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", open_the_removed_file_first)
    with library.artifact_lock("motion", "M") as taken:
        assert opened == [lock.name, lock.name] and taken == lock
        assert lock.read_text() == str(os.getpid())
        monkeypatch.setattr(os, "open", real_open)
        with pytest.raises(UserError, match="being trained by another process"):
            with library.artifact_lock("motion", "M"):
                pass
    assert not lock.exists()


def test_recover_leaves_a_swap_in_flight_alone(isolated_home):
    """An old version moved aside by a live process is that process's to put back or delete; `recover()` in
    another process must not move it back into place while the new version is being renamed in."""
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        aside = isolated_home / ".trash" / f"subjects__my.dog.{holder.pid}.0123abcd"
        aside.mkdir(parents=True)
        library.recover()
        assert aside.is_dir() and not (isolated_home / "subjects" / "my.dog").exists()
    finally:
        holder.kill()
        holder.wait()
    library.recover()  # its owner is dead now: the interrupted swap is rolled back
    assert not aside.exists() and (isolated_home / "subjects" / "my.dog").is_dir()


@pytest.mark.parametrize("argv", [["list"], ["generate", "--prompt", "a S* ball", "--subject", "S*"],
                                  ["train-subject", "photos", "--name", "S*", "--class-noun", "ball"]])
def test_a_library_path_that_is_a_file_is_one_line_naming_it(argv, tmp_path, capsys, monkeypatch):
    from vidbooth.cli.app import main

    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("keep me")
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["--home", str(not_a_folder), *argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"the library {not_a_folder} is a file, not a folder" in errors[0], err
    assert not_a_folder.read_text() == "keep me"


def test_an_empty_home_is_refused_not_taken_for_the_default(capsys, monkeypatch):
    from vidbooth.cli.app import main

    monkeypatch.setattr(library, "library_home", lambda: pytest.fail("the default library was used"))
    assert main(["--home", "", "list"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --home is empty: give the library folder, or leave --home out for the default"
    )


def test_damaged_renamed_and_foreign_folders_are_named_by_list_and_never_crash_a_lookup(isolated_home):
    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    root = isolated_home / "subjects"
    (root / "nullname").mkdir()
    (root / "nullname" / library.MANIFEST).write_text(json.dumps(
        {"name": None, "kind": "subject", "schema_version": 1, "files": {}}))
    import shutil

    shutil.copytree(root / "S%2A", root / "dog2")  # renamed by hand: its manifest still says 'S*'
    (root / "notes").mkdir()  # no manifest at all
    problems = []
    assert [m["name"] for m in library.list_artifacts("subject", problems)] == ["S*"]
    assert len(problems) == 3 and any("dog2 holds subject 'S*', whose folder is named S%2A" in p for p in problems)
    assert any("nullname" in p and "no text name" in p for p in problems)
    assert any("notes has no manifest.json" in p for p in problems)
    with pytest.raises(UserError, match=r"unknown subject 'nosuch'.*known subjects: S\*\)"):  # had been a TypeError
        library.artifact_dir("subject", "nosuch")
    with pytest.raises(UserError, match="rename the folder back"):
        library.read_manifest(library.artifact_dir("subject", "dog2"))
    shutil.copytree(root / "S%2A", isolated_home / "motions" / "S%2A")  # a subject put among the motions
    assert library.list_artifacts("motion", problems) == []  # had been listed as a motion
    assert problems[-1] == (f"{isolated_home / 'motions' / 'S%2A'} holds subject 'S*', not a motion: move it to "
                            f"{root}")
    with pytest.raises(UserError, match="not a motion"):
        library.read_manifest(library.artifact_dir("motion", "S*"))
    shutil.rmtree(isolated_home / "motions")
    (isolated_home / "motions").write_text("")
    assert library.list_artifacts("motion", problems) == [] and problems[-1].endswith(
        "motions is a file, not the folder of the motions: move it out of the library")
    shutil.rmtree(root / "dog2")
    (root / "S%2A").rename(root / "dog")  # its name, looked up, had been 'unknown subject' as if never learned
    with pytest.raises(UserError, match=rf"^subject 'S\*' is in {re.escape(str(root / 'dog'))}, a folder renamed by "
                                        r"hand: rename it back to S%2A$"):
        library.artifact_dir("subject", "S*")
    (root / "S%2A").mkdir()  # `mv dog S%2A` would move it into this one
    with pytest.raises(UserError, match=rf"hand: remove the empty folder {re.escape(str(root / 'S%2A'))}, then rename "
                                        r"it back to S%2A$"):
        library.artifact_dir("subject", "S*")


def test_an_unknown_name_says_when_it_is_of_the_other_kind_or_a_stopped_training(isolated_home):
    """`identity-adapter --name M` of a motion M, or of a subject whose textual inversion was stopped, had said only
    'unknown subject'."""
    with library.staged_artifact("motion", "M") as stage:
        library.write_json(stage / library.MANIFEST, {"name": "M", "kind": "motion"})
    with pytest.raises(UserError, match=r"unknown subject 'M' in .* \(no subjects yet: learn one with vidbooth "
                                        r"train-subject PHOTOS --class-noun NOUN --name M; 'M' is a motion\)$"):
        library.artifact_dir("subject", "M")
    with pytest.raises(UserError, match=r"\(known motions: M\)$"):
        library.artifact_dir("motion", "W*")
    with pytest.raises(UserError, match=r"no subjects yet: learn one with vidbooth train-subject PHOTOS --class-noun "
                                        r"NOUN --name 'W\*'\)$"):
        library.artifact_dir("subject", "W*")  # quoted, to paste into a shell
    (isolated_home / ".runs" / "subjects" / "Q%2A" / "textual-inversion" / "checkpoints" / "step-000002").mkdir(
        parents=True)
    with pytest.raises(UserError, match=r"a stopped training of subject 'Q\*' can be finished: rerun it with --resume"):
        library.artifact_dir("subject", "Q*")


def test_a_motion_is_not_learned_on_an_image_model_with_another_motion_module():
    """Only a subject (image layers alone) may go by the image model's fingerprint; a motion adapter belongs to its
    motion module (mutation testing)."""
    from vidbooth.library import learned_on

    subject = {"kind": "subject", "base_fingerprint": "aaa", "image_fingerprint": "img"}
    motion = {"kind": "motion", "base_fingerprint": "aaa", "image_fingerprint": "img"}
    assert learned_on(subject, "bbb", "img")
    assert not learned_on(motion, "bbb", "img")


def test_an_artifact_of_the_same_base_name_with_other_weights_says_how_it_was_loaded():
    """The message had named a --revision flag, which no command has."""
    manifest = {"kind": "motion", "base": "org/model", "base_fingerprint": "aaa",
                "config": {"backbone": {"base": "org/model", "revision": "v2", "variant": "fp16"}}}
    with pytest.raises(UserError, match=r"motion 'M' was learned on org/model \(fingerprint aaa\), not on org/model as "
                                        r"loaded now \(fingerprint bbb\): load it as it was learned with \(--set "
                                        r"backbone.revision=v2 --set backbone.variant=fp16\), or retrain it on this "
                                        r"base$"):
        library.check_base("motion", "M", manifest, "org/model", "bbb")
    del manifest["config"]
    with pytest.raises(UserError, match=r": the model's weights have changed since it was learned \(another "
                                        r"download or revision\), or retrain it on this base$"):
        library.check_base("motion", "M", manifest, "org/model", "bbb")


@pytest.mark.parametrize("given", ["models/sd", "./models/sd/", "~/models/sd", "link"])
def test_the_same_base_folder_given_another_way_says_how_it_was_loaded(given, tmp_path, monkeypatch):
    """The manifest records the folder as an absolute path; `--base models/sd` (relative, '~', a trailing slash, a
    link to it) with another motion adapter had been told 'use --base /abs/models/sd', the folder already given."""
    folder = tmp_path / "models" / "sd"
    folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    manifest = {"kind": "motion", "base": str(folder), "base_fingerprint": "aaa",
                "config": {"backbone": {"base": str(folder), "motion_adapter": "/adapters/v3"}}}
    with pytest.raises(UserError, match=r"load it as it was learned with \(--motion-adapter /adapters/v3\), or "):
        library.check_base("motion", "M", manifest, given, "bbb")


def test_a_base_to_load_is_quoted_for_the_shell():
    """'use --base /models/my base' pasted into a shell had given 'unexpected extra argument (base)'."""
    manifest = {"kind": "subject", "base": "/models/my base", "base_fingerprint": "aaa"}
    with pytest.raises(UserError, match=r": use --base '/models/my base', or retrain it on this base$"):
        library.check_base("subject", "S*", manifest, "nano", "bbb")
    manifest = {"kind": "motion", "base": "org/model", "base_fingerprint": "aaa",
                "config": {"backbone": {"base": "org/model", "motion_adapter": "/adapters/v 3"}}}
    with pytest.raises(UserError, match=r"load it as it was learned with \(--motion-adapter '/adapters/v 3'\)"):
        library.check_base("motion", "M", manifest, "org/model", "bbb")


def test_a_manifest_holding_nan_or_infinity_is_not_json_and_list_json_stays_json(isolated_home, capsys):
    """Python reads NaN and Infinity, which JSON does not have: a manifest edited to hold one had been listed, and
    `list --json` printed `NaN`, which jq and other JSON readers refuse."""
    from vidbooth.cli.app import main

    with library.staged_artifact("subject", "S*") as stage:
        _write(stage)
    where = isolated_home / "subjects" / "S%2A" / library.MANIFEST
    manifest = json.loads(where.read_text())
    for constant in ("NaN", "Infinity", "-Infinity"):
        where.write_text(json.dumps(manifest | {"schema_version": 1, "files": {}})[:-1] + f', "loss": {constant}}}')
        with pytest.raises(UserError, match=r"manifest .* is not valid JSON \(damaged\)"):
            library.read_manifest(where.parent, verify=False)
        assert main(["list", "--json"]) == 0
        out, err = capsys.readouterr()
        assert json.loads(out, parse_constant=lambda text: pytest.fail(f"list --json printed {text}")) == []
        assert "not listed: manifest" in err and "not valid JSON" in err
