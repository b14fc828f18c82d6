"""The generated bad-input corpus (tests/badinputs.py), driven through the CLI of the commands that take photos.

Clip inputs go through `train-motion` in tests/test_motion_inputs.py and through `evaluate` in
tests/test_eval_cli.py; generate's own inputs in tests/test_cli_generate.py.
"""

from __future__ import annotations

import json

import pytest

import badinputs
from vidbooth.cli.app import main

FAST = ["--class-noun", "ball", "--steps", "1", "--device", "cpu", "--batch-size", "1", "--set", "data.resolution=16",
        "--set", "preview.enabled=false"]


def _library_files(home):
    return sorted(p.relative_to(home) for p in home.rglob("*") if ".locks" not in p.parts) if home.exists() else []


@pytest.mark.parametrize("kind", badinputs.REFUSED_IMAGE_KINDS)
def test_refused_photo_is_one_line_exit_2_naming_the_file(kind, tmp_path, isolated_home, capsys):
    folder = tmp_path / "photos"
    badinputs.write_photo(folder / "good_1.png")
    bad = badinputs.make_bad_image(kind, folder)
    before = _library_files(isolated_home)
    assert main(["textual-inversion", str(folder), "--name", "S*", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and bad.name in err
    assert _library_files(isolated_home) == before


@pytest.mark.parametrize("kind", badinputs.REFUSED_PHOTO_FOLDER_KINDS)
def test_refused_photo_folder_is_one_line_exit_2(kind, tmp_path, isolated_home, capsys):
    folder = badinputs.make_bad_photo_folder(kind, tmp_path / "in")
    assert main(["textual-inversion", str(folder), "--name", "S*", *FAST]) == 2
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert lines[-1].startswith("error:")  # one error line; a warning may come first (skipped HEIC files)
    assert not any(line.startswith("error:") for line in lines[:-1])
    assert "".join(str(folder).split()) in "".join(err.split())  # names the folder, however rich wraps it
    assert not (isolated_home / "subjects").exists()


def test_every_accepted_photo_kind_trains_in_one_run(tmp_path, tiny_base_dirs, isolated_home):
    """CMYK, 16-bit, palette, RGBA, grayscale, EXIF-rotated, animated, webp/bmp, unicode paths and a
    12000x8000 JPEG, all in one folder: the subject trains and keeps every photo."""
    folder = tmp_path / badinputs.UNICODE_FOLDER
    assert "huge_jpeg" in badinputs.ACCEPTED_IMAGE_KINDS
    for kind in badinputs.ACCEPTED_IMAGE_KINDS:
        badinputs.make_bad_image(kind, folder / kind)
    flat = tmp_path / "flat photos"
    flat.mkdir()
    for index, path in enumerate(sorted(p for p in folder.rglob("*") if p.is_file())):
        path.rename(flat / f"{index:02d} {path.name}")
    count = len(list(flat.iterdir()))
    assert main(["textual-inversion", str(flat), "--name", "S*", "--base", str(tiny_base_dirs["unet3d"]), *FAST]) == 0
    manifest = json.loads((isolated_home / "subjects" / "S%2A" / "manifest.json").read_text())
    assert len(manifest["photos"]) == count


def test_generate_into_an_unwritable_place(tmp_path, capsys):
    blocker = tmp_path / "a file"
    blocker.write_text("x")
    assert main(["generate", "--prompt", "x", "--out", str(blocker / "out.mp4"), "--steps", "1"]) == 2
    assert "cannot create output folder" in capsys.readouterr().err
