"""The class-image cache of prior preservation, as training reads it back."""

from __future__ import annotations

import pytest
from PIL import Image

from vidbooth.engine.prior import read_class_images
from vidbooth.errors import UserError


@pytest.mark.parametrize("damage", ["emptied", "removed"])
def test_a_cached_class_image_damaged_or_removed_since_it_was_made_says_to_delete_the_cache(damage, tmp_path):
    folder = tmp_path / "class-images"
    folder.mkdir()
    for index in range(2):
        Image.new("RGB", (32, 32), (200, 0, 0)).save(folder / f"{index:05d}.png")
    damaged = folder / "00001.png"
    damaged.write_bytes(b"") if damage == "emptied" else damaged.unlink()
    assert [image.size for image in read_class_images(folder, 1)] == [(32, 32)]
    with pytest.raises(UserError, match=rf"^cannot read the cached class image {damaged}: delete {folder} and run "
                                        "again$"):
        read_class_images(folder, 2)


def test_class_images_named_in_another_encoding_are_digested(tmp_path):
    """A --class-images file named in another encoding had ended train-subject in a UnicodeEncodeError traceback."""
    import os

    from vidbooth.data.images import hash_files
    from vidbooth.engine.prior import class_image_files

    for name in ("a.png", os.fsdecode(b"\xffb.png")):
        Image.new("RGB", (64, 64), "red").save(tmp_path / name)
    assert len(hash_files(class_image_files(tmp_path, 2))) == 64


def test_a_class_image_folder_whose_name_is_not_text_is_refused(tmp_path, monkeypatch):
    """Given from inside it, its absolute path, which config.yaml records, had failed that write after training."""
    import os
    from pathlib import Path

    from vidbooth.engine.prior import class_image_files

    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    Image.new("RGB", (64, 64), "red").save(folder / "a.png")
    monkeypatch.chdir(folder)
    with pytest.raises(UserError, match=r"^--class-images path '.*/caf\\udce9' is not text in this terminal's "):
        class_image_files(".", 1)
