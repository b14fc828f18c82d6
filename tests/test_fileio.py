"""Files vidbooth writes through a temporary file get the permissions of any new file, not mkstemp's 0600; a
refused write reaches the caller as the operating system's error."""

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vidbooth.data.video import write_video
from vidbooth.eval.report import EvaluationReport, write_reports


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_written_videos_are_readable_by_others(tmp_path, umask_022, suffix):
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    assert _mode(write_video(frames, tmp_path / f"out{suffix}")) == 0o644


def test_umask_is_respected(tmp_path):
    previous = os.umask(0o077)
    try:
        path = write_video(np.zeros((2, 16, 16, 3), dtype=np.uint8), tmp_path / "private.gif")
    finally:
        os.umask(previous)
    assert _mode(path) == 0o600


def test_evaluation_reports_are_readable_by_others(tmp_path, umask_022):
    assert _mode(write_reports(EvaluationReport([], {}, {}, [], {}), tmp_path / "report.json")[0]) == 0o644


def test_models_written_through_save_pretrained_follow_the_umask(tmp_path, umask_022):
    """safetensors' writer makes its files 0600: the tiny models in a shared cache (and a nano export) had been
    unreadable by the other users of it."""
    from vidbooth.engine.tiny import motion_adapter_folder, save_tiny_backbone

    folder = save_tiny_backbone(tmp_path / "tiny", "animatediff")
    written = [p for root in (folder, motion_adapter_folder(folder)) for p in (root, *root.rglob("*"))]
    assert any(p.suffix == ".safetensors" for p in written)
    assert {p.name: _mode(p) for p in written if p.is_file()} == {p.name: 0o644 for p in written if p.is_file()}
    assert {_mode(p) for p in written if p.is_dir()} == {0o755}


def test_usual_modes_are_those_the_umask_gives_a_new_file_and_folder(tmp_path):
    """(mutation testing) The umask in force, not 022, and the top folder and the folders under it too."""
    from vidbooth.fileio import with_usual_modes

    (tmp_path / "top" / "sub").mkdir(parents=True)
    (tmp_path / "top" / "sub" / "w.safetensors").write_bytes(b"")
    for path, mode in ((tmp_path / "top", 0o700), (tmp_path / "top" / "sub", 0o700),
                       (tmp_path / "top" / "sub" / "w.safetensors", 0o600)):
        os.chmod(path, mode)
    previous = os.umask(0o027)
    try:
        with_usual_modes(tmp_path / "top")
    finally:
        os.umask(previous)
    assert [_mode(p) for p in (tmp_path / "top", tmp_path / "top" / "sub", tmp_path / "top" / "sub" / "w.safetensors")
            ] == [0o750, 0o750, 0o640]


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_write_safetensors_reports_a_failed_write_as_the_os_error(tmp_path):
    """A write the operating system refuses (here a file-size limit, EFBIG; a full disk is ENOSPC) reaches the
    caller as OSError with its errno, which the full-disk handlers read; safetensors' own writer raises
    SafetensorError without one. Run in a child process so that the limit binds nothing else."""
    script = f"""
import errno, resource, signal, torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from vidbooth.fileio import write_safetensors
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
tensors = {{"w": torch.zeros(10_000)}}
try:
    write_safetensors({str(tmp_path / "a.safetensors")!r}, tensors)
except OSError as exc:
    print("vidbooth", errno.errorcode[exc.errno])
try:
    save_file(tensors, {str(tmp_path / "b.safetensors")!r})
except SafetensorError:
    print("safetensors SafetensorError")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["vidbooth EFBIG", "safetensors SafetensorError"], out.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_a_video_that_ffmpeg_stops_writing_midway_is_an_error_not_a_kept_file(tmp_path):
    """ffmpeg's writer does not say when ffmpeg stops early: under a file-size limit (or on a full disk) the video
    cut short had been kept as if whole, and train-motion had saved a motion with a broken clip, exit 0. Run in
    a child process so that the limit binds nothing else."""
    script = f"""
import errno, resource, numpy as np
from vidbooth.data.video import write_video
frames = np.random.default_rng(0).integers(0, 256, (16, 128, 128, 3), dtype=np.uint8)
resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_video(frames, {str(tmp_path / "v.mp4")!r})
except OSError as exc:
    print(errno.errorcode[exc.errno], exc.filename)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.stdout.splitlines() == [f"EFBIG {tmp_path / 'v.mp4'}"], out.stderr
    assert os.listdir(tmp_path) == []  # no temporary left, nothing published


def test_an_mp4_is_whole_only_when_its_boxes_fill_it_and_it_has_its_index(tmp_path):
    from vidbooth.data.video import _whole_mp4

    path = write_video(np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), tmp_path / "v.mp4")
    data = path.read_bytes()
    assert _whole_mp4(path)
    for cut in (len(data) - 1, len(data) // 2, 7):
        (tmp_path / "cut.mp4").write_bytes(data[:cut])
        assert not _whole_mp4(tmp_path / "cut.mp4"), cut
    (tmp_path / "no-index.mp4").write_bytes((16).to_bytes(4, "big") + b"free" + bytes(8))  # whole boxes, no moov
    assert not _whole_mp4(tmp_path / "no-index.mp4")


def test_an_mp4s_box_sizes_are_read_as_the_format_writes_them(tmp_path):
    """(mutation testing) A 64-bit size, a size of 0 (to the end of the file) and a size under a header's 8 bytes."""
    from vidbooth.data.video import _whole_mp4

    def box(kind: bytes, body: bytes = bytes(8), size: int | None = None) -> bytes:
        return (8 + len(body) if size is None else size).to_bytes(4, "big") + kind + body

    cases = {
        "64-bit": (box(b"mdat", (1).to_bytes(4, "big") + b"xxxx", size=1)[:8] + (24).to_bytes(8, "big") + bytes(8)
                   + box(b"moov"), True),
        "to the end": (box(b"moov") + box(b"mdat", bytes(20), size=0), True),
        "only to the end": (box(b"mdat", bytes(20), size=0), False),  # no index
        "under 8 bytes": ((4).to_bytes(4, "big") + box(b"moov"), False),  # read on, it would end on a moov
    }
    for name, (data, whole) in cases.items():
        (tmp_path / "v.mp4").write_bytes(data)
        assert _whole_mp4(tmp_path / "v.mp4") is whole, name


def test_a_video_cut_short_is_a_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    import errno
    import shutil

    from vidbooth.data.video import _cut_short

    (tmp_path / "v.mp4").write_bytes(bytes(100))
    assert _cut_short(tmp_path / "v.mp4").errno == errno.EIO  # room left, no file-size limit reached
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 0))
    assert _cut_short(tmp_path / "v.mp4").errno == errno.ENOSPC


def test_a_folder_that_takes_no_new_files_is_one_user_error_naming_the_output(tmp_path, monkeypatch):
    """/proc as root: writable by its mode, yet creating a file there fails with ENOENT, which had reached the user
    as a FileNotFoundError about a temporary name. A permission error stays itself (the command line words it)."""
    import errno
    import tempfile

    from vidbooth import fileio
    from vidbooth.errors import UserError

    def refuse(error):
        def mkstemp(*args, **kwargs):
            raise error
        return mkstemp

    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    monkeypatch.setattr(tempfile, "mkstemp", refuse(FileNotFoundError(errno.ENOENT, "No such file or directory")))
    with pytest.raises(UserError, match=rf"cannot write {tmp_path / 'out.mp4'}: {tmp_path} takes no new files "
                                        r"\(no such file or directory\)"):
        write_video(frames, tmp_path / "out.mp4")
    monkeypatch.setattr(tempfile, "mkstemp", refuse(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError):
        fileio.write_together([(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))])
    assert list(tmp_path.iterdir()) == []


def test_the_same_tensors_and_metadata_write_the_same_bytes_and_read_back(tmp_path):
    """safetensors' writer orders metadata keys at random: two identical trainings wrote files (and manifest
    fingerprints) that differed. The header's metadata is written in key order; the file reads back whole."""
    import torch
    from safetensors import safe_open

    from vidbooth.fileio import write_safetensors

    tensors = {"up.weight": torch.arange(6.0).view(2, 3), "scale": torch.ones(3, dtype=torch.float16)}
    metadata = {f"key{i}": f"värde {i}" for i in range(12)}  # non-ASCII text kept as it is
    written = set()
    for index in range(4):
        path = tmp_path / f"{index}.safetensors"
        write_safetensors(path, tensors, dict(reversed(metadata.items())) if index % 2 else metadata)
        written.add(path.read_bytes())
        with safe_open(str(path), "pt") as file:
            assert file.metadata() == metadata
            assert all(torch.equal(file.get_tensor(name), tensor) for name, tensor in tensors.items())
    assert len(written) == 1
    data = written.pop()
    assert (8 + int.from_bytes(data[:8], "little")) % 8 == 0  # the tensors' data stays aligned


def _files(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(folder.iterdir())}


def test_a_rename_that_fails_while_publishing_puts_back_the_files_already_replaced(tmp_path, monkeypatch):
    """A refused rename of the third file had left the first two new beside the old third (generate's mp4 and png
    beside the yaml of the video before)."""
    from vidbooth import fileio

    (tmp_path / "a.mp4").write_text("old video")
    (tmp_path / "a.yaml").write_text("old config")
    renames = []

    def publish(temporary, path):
        if Path(path).name == "a.yaml":
            raise PermissionError(1, "Operation not permitted")
        renames.append(Path(path).name)
        os.replace(temporary, path)

    monkeypatch.setattr(fileio, "publish", publish)
    writes = [(tmp_path / name, lambda tmp, name=name: tmp.write_text(f"new {name}")) for name in
              ("a.mp4", "a.png", "a.yaml")]
    with pytest.raises(PermissionError):
        fileio.write_together(writes)
    assert renames == ["a.mp4", "a.png"]
    assert _files(tmp_path) == {"a.mp4": "old video", "a.yaml": "old config"}  # the new a.png went again


def test_a_stop_while_publishing_is_held_until_every_file_is_in_place(tmp_path, monkeypatch):
    """Ctrl-C between two renames had left a new video beside the old config."""
    import signal

    from vidbooth import fileio

    (tmp_path / "a.yaml").write_text("old config")
    publish = fileio.publish

    def publish_then_stop(temporary, path):
        publish(temporary, path)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(fileio, "publish", publish_then_stop)
    writes = [(tmp_path / name, lambda tmp, name=name: tmp.write_text(f"new {name}")) for name in ("a.mp4", "a.yaml")]
    with pytest.raises(KeyboardInterrupt):  # delivered to the handler there (here Python's own) once all are in
        fileio.write_together(writes)
    assert _files(tmp_path) == {"a.mp4": "new a.mp4", "a.yaml": "new a.yaml"}


def test_what_a_killed_write_left_beside_a_file_is_removed_by_the_next_write_once_stale(tmp_path):
    """SIGKILL leaves a `write_together` temporary (hidden, 0600) that nothing had ever removed; one still fresh may
    be another run's, being written now."""
    import time

    from vidbooth.fileio import STALE_TEMPORARY_S, write_together

    target = tmp_path / "take-1.mp4"
    stale, fresh = tmp_path / ".tmp-take-1-abc12345.mp4", tmp_path / ".tmp-take-1-def45678.mp4"
    others = [tmp_path / ".tmp-take-10-abc12345.mp4",  # another file's, also stale, is not this write's to remove
              tmp_path / ".tmp-take-abc12345.mp4"]  # nor take.mp4's, whose name take-1.mp4's starts with
    for leftover in (stale, fresh, *others):
        leftover.write_bytes(b"")
    old = time.time() - STALE_TEMPORARY_S - 60
    for leftover in (stale, *others):
        os.utime(leftover, (old, old))
    write_together([(target, lambda tmp: tmp.write_bytes(b"video"))])
    assert target.read_bytes() == b"video"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, fresh.name, *(p.name for p in others)])
    write_together([(target, lambda tmp: tmp.write_bytes(b"again"))])  # over an old file: its kept copy is no
    assert target.read_bytes() == b"again" and not list(tmp_path.glob(".old-*"))  # temporary, and is removed


def test_a_video_written_together_with_others_makes_one_temporary_each(tmp_path, monkeypatch):
    """generate had called write_video inside write_together: a temporary of the temporary (.tmp-.tmp-...)."""
    import vidbooth.fileio as fileio
    from vidbooth.data.video import contact_sheet_writer, video_writer

    made = []
    mkstemp = fileio.tempfile.mkstemp
    monkeypatch.setattr(fileio.tempfile, "mkstemp", lambda **kw: made.append(kw["prefix"]) or mkstemp(**kw))
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    fileio.write_together([(tmp_path / "a.mp4", video_writer(frames, tmp_path / "a.mp4")),
                           (tmp_path / "a.png", contact_sheet_writer(frames))])
    assert made == [".tmp-a-", ".tmp-a-"] and sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "a.png"]


def test_an_old_file_kept_by_a_killed_write_is_removed_an_hour_after_it_was_kept(tmp_path, monkeypatch):
    """A SIGKILL while publishing leaves the hard link kept to put the old file back; it has the old file's
    modification time, so its age is its link's (the change time)."""
    import time

    import vidbooth.fileio as fileio

    target = tmp_path / "a.mp4"
    kept = tmp_path / ".old-a-abc12345.mp4"
    target.write_bytes(b"old")
    os.link(target, kept)
    long_ago = time.time() - 10 * fileio.STALE_TEMPORARY_S
    os.utime(kept, (long_ago, long_ago))  # as an old video's: still kept, just linked
    fileio.write_together([(target, lambda tmp: tmp.write_bytes(b"new"))])
    assert kept.exists()  # linked a moment ago: it may be another run's, publishing now
    later = time.time() + fileio.STALE_TEMPORARY_S + 60
    monkeypatch.setattr(time, "time", lambda: later)
    fileio.write_together([(target, lambda tmp: tmp.write_bytes(b"newer"))])
    assert not kept.exists() and target.read_bytes() == b"newer"


def _record_syncs(monkeypatch, fileio) -> list[tuple[str, str]]:
    """(event, name) for each fsync (of the file or folder an fd was opened on) and each rename, in order."""
    events, opened = [], {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def open_(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        opened[fd] = Path(path)
        return fd

    def fsync(fd):
        events.append(("sync", opened[fd].name))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(fileio.os, "open", open_)
    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    return events


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot flush a folder")
def test_files_are_on_the_disk_before_their_renames_and_the_renames_after(tmp_path, monkeypatch):
    """Without a flush, a power loss after the rename could leave an empty or partly written file under the final
    name: each temporary is flushed before any rename, and the folder (which holds the renames) after them."""
    from vidbooth import fileio

    events = _record_syncs(monkeypatch, fileio)
    fileio.write_together([(tmp_path / name, lambda tmp, name=name: tmp.write_text(name)) for name in ("a.mp4",
                                                                                                     "a.yaml")])
    temporaries = [name for event, name in events[:2]]
    assert [event for event, _ in events[:2]] == ["sync", "sync"] and all(n.startswith(".tmp-a-") for n in temporaries)
    assert events[2:] == [("rename", "a.mp4"), ("rename", "a.yaml"), ("sync", tmp_path.name)]


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot flush a folder")
def test_a_built_folder_is_on_the_disk_before_it_is_renamed_in(tmp_path, monkeypatch):
    from vidbooth import fileio

    (tmp_path / "model").mkdir()
    with fileio.folder_beside(tmp_path / "model") as built:
        (built / "sub").mkdir()
        (built / "sub" / "weights.safetensors").write_text("w")
        events = _record_syncs(monkeypatch, fileio)
        fileio.replace_folder(built, tmp_path / "model")
    assert events[:3] == [("sync", built.name), ("sync", "weights.safetensors"), ("sync", "sub")]
    assert events[3:] == [("rename", "model"), ("rename", "model"), ("sync", tmp_path.name)]
    assert (tmp_path / "model" / "sub" / "weights.safetensors").read_text() == "w"


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot flush a folder")
def test_a_training_checkpoint_is_on_the_disk_before_it_is_renamed_in(tmp_path, monkeypatch):
    import types

    import torch

    from vidbooth import fileio
    from vidbooth.engine.train import save_checkpoint

    weight = torch.nn.Parameter(torch.ones(3))
    method = types.SimpleNamespace(state_dict=lambda: {"w": weight.detach()})
    events = _record_syncs(monkeypatch, fileio)
    final = save_checkpoint(tmp_path, 10, method, torch.optim.AdamW([weight]), None, {"run": "a"}, 0.5)
    assert sorted(events[:3]) == [("sync", name) for name in sorted(path.name for path in final.iterdir())]
    assert events[3][0] == "sync" and events[3][1].startswith(".tmp-step-0000010-")  # the folder, after its files
    assert events[4:] == [("rename", final.name), ("sync", final.parent.name)]


def test_a_file_system_that_cannot_flush_still_gets_the_file(tmp_path, monkeypatch):
    """fsync raises EINVAL on some network and shared-folder file systems: the write is left to the system there,
    as before vidbooth flushed, not a traceback."""
    import errno

    from vidbooth import fileio

    def cannot(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(fileio.os, "fsync", cannot)
    fileio.write_together([(tmp_path / "a.mp4", lambda tmp: tmp.write_text("video"))])
    assert _files(tmp_path) == {"a.mp4": "video"}

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileio.os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output error") as failed:
        fileio.write_together([(tmp_path / "a.mp4", lambda tmp: tmp.write_text("new video"))])
    assert failed.value.filename == str(tmp_path / "a.mp4")  # the file, not its temporary
    assert _files(tmp_path) == {"a.mp4": "video"}


def test_macos_flushes_through_the_drive_cache_and_falls_back_to_fsync(tmp_path, monkeypatch):
    """On macOS fsync leaves the data in the drive's cache: F_FULLFSYNC is asked for instead, and where a file system
    refuses it, fsync is used."""
    import types

    from vidbooth import fileio

    calls = []
    refuse = []

    def fcntl_(fd, command):
        calls.append(("full", command))
        if refuse:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    monkeypatch.setattr(fileio, "fcntl", types.SimpleNamespace(fcntl=fcntl_))
    monkeypatch.setattr(fileio, "_FULL_FSYNC", 51)
    monkeypatch.setattr(fileio.os, "fsync", lambda fd: calls.append(("fsync", None)))
    (tmp_path / "a").write_text("a")
    fileio.sync_file(tmp_path / "a")
    assert calls == [("full", 51)]
    refuse.append(True)
    fileio.sync_file(tmp_path / "a")
    assert calls == [("full", 51), ("full", 51), ("fsync", None)]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_a_built_folder_is_not_opened_to_be_flushed(tmp_path):
    from vidbooth import fileio

    import threading

    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "weights").write_text("w")
    flushing = threading.Thread(target=fileio.sync_tree, args=(tmp_path,), daemon=True)
    flushing.start()
    flushing.join(timeout=20)
    assert not flushing.is_alive()  # opening the FIFO would have waited for a writer for ever



@pytest.mark.parametrize("journal", ["[1, 2]", '{"renames": [["a"]], "olds": []}', '{"renames": []}', "[" * 100_000])
def test_a_journal_damaged_otherwise_than_cut_short_is_taken_as_no_rename_begun(tmp_path, journal):
    """pretrain --resume with a damaged saving.json had been a TypeError traceback: like one cut short while it was
    written, it leaves the files as they are and is removed."""
    from vidbooth.fileio import finish_writing

    kept = tmp_path / "state.json"
    kept.write_text("old")
    (tmp_path / "saving.json").write_text(journal)
    assert finish_writing(tmp_path / "saving.json") is True
    assert kept.read_text() == "old" and not (tmp_path / "saving.json").exists()


def test_what_a_killed_run_left_as_a_temporary_folder_is_removed_whole_unless_only_files_are_asked_for(tmp_path):
    from vidbooth.fileio import remove_stale_temporaries

    (tmp_path / ".tmp-checkpoint").mkdir()
    (tmp_path / ".tmp-checkpoint" / "state.json").write_text("{}")
    (tmp_path / ".tmp-file").write_text("cut")
    (tmp_path / "kept").write_text("kept")
    remove_stale_temporaries(tmp_path, older_than_s=0, files_only=True)
    assert sorted(path.name for path in tmp_path.iterdir()) == [".tmp-checkpoint", "kept"]
    assert (tmp_path / ".tmp-checkpoint" / "state.json").is_file()
    remove_stale_temporaries(tmp_path, older_than_s=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept"]


def test_on_a_file_system_without_hard_links_a_failed_publish_still_puts_back_the_old_files(tmp_path, monkeypatch):
    from vidbooth import fileio

    (tmp_path / "a.mp4").write_text("old video")
    (tmp_path / "a.yaml").write_text("old config")

    def no_link(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    def publish(temporary, path):
        if Path(path).name == "a.yaml":
            raise OSError(errno.EIO, "Input/output error")
        os.replace(temporary, path)

    monkeypatch.setattr(fileio.os, "link", no_link)
    monkeypatch.setattr(fileio, "publish", publish)
    writes = [(tmp_path / name, lambda tmp, name=name: tmp.write_text(f"new {name}")) for name in ("a.mp4", "a.yaml")]
    with pytest.raises(OSError, match="Input/output error"):
        fileio.write_together(writes)
    assert _files(tmp_path) == {"a.mp4": "old video", "a.yaml": "old config"}


def test_a_folder_replace_whose_second_rename_fails_keeps_the_old_folder_whole(tmp_path, monkeypatch):
    from vidbooth import fileio

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights").write_text("old")
    (tmp_path / "built").mkdir()
    (tmp_path / "built" / "weights").write_text("new")
    replace = os.replace

    def failing_replace(source, target):
        if Path(source).name == "built":
            raise OSError(errno.EIO, "Input/output error")
        replace(source, target)

    monkeypatch.setattr(fileio.os, "replace", failing_replace)
    with pytest.raises(OSError, match="Input/output error"):
        fileio.replace_folder(tmp_path / "built", tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["built", "model"]


def test_a_written_file_its_owner_may_not_read_back_is_a_permission_error_naming_it_and_nothing_is_replaced(
        tmp_path, monkeypatch):
    """(umask 0400, as a user other than root: the temporary is write-only, and flushing opens it to read.)"""
    from vidbooth import fileio

    (tmp_path / "a.mp4").write_text("old video")
    real_open = os.open

    def write_only(path, flags, *args, **kwargs):
        if Path(path).name.startswith(".tmp-") and flags == os.O_RDONLY:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "open", write_only)
    with pytest.raises(PermissionError) as refused:
        fileio.write_together([(tmp_path / "a.mp4", lambda tmp: tmp.write_text("new video"))])
    assert refused.value.filename == str(tmp_path / "a.mp4") and _files(tmp_path) == {"a.mp4": "old video"}


def _traced_peak(write) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        write()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_writing_safetensors_holds_no_copy_of_the_files_bytes_beside_the_writers(tmp_path):
    """The header's metadata was sorted by slicing the tensors' bytes out of the writer's and joining them to the new
    header: two more copies at once, +2.2 GB while a real-size motion's checkpoint (0.73 GB of Adam moments) was
    saved. Measured against safetensors' own writer, which holds one copy (0.8) or two (0.4, the floor) itself."""
    import torch
    from safetensors.torch import save

    from vidbooth.fileio import write_safetensors

    tensors = {"moments": torch.ones(4 * 2**20)}  # 16 MB; the tensor's own memory is torch's, not traced
    size = tensors["moments"].numel() * 4
    writers = _traced_peak(lambda: save(tensors, metadata={"b": "1", "a": "2"}))
    peak = _traced_peak(lambda: write_safetensors(tmp_path / "big.safetensors", tensors, {"b": "1", "a": "2"}))
    assert peak < writers + 0.25 * size, f"{(peak - writers) / size:.2f} copies of the bytes beside the writer's"
    assert (tmp_path / "big.safetensors").stat().st_size < size + 4096
