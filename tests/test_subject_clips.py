"""A folder of clips with captions and subject photos or masks (`train-image-prompt --data`): what is found, what is
refused before any decoding, and the photo a mask cuts out of the first frame."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vidbooth.data.subject_clips import (
    cut_out,
    find_subject_clips,
    folder_digest,
    load_subject_clip,
    load_subject_photo,
    place_at_random,
)
from vidbooth.errors import UserError
from vidbooth.nano.world import Motion, Sprite, render_clip

from tests.media import make_subject_clips


def test_each_clip_is_found_with_its_caption_and_its_photo_or_mask(tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=3)
    (folder / "notes.md").write_text("not a clip")
    (folder / ".hidden.mp4").write_bytes(b"")
    found = find_subject_clips(folder, "subject")
    assert [c.clip.name for c in found] == ["clip1.mp4", "clip2.mp4", "clip3.mp4"]
    assert found[0].caption == "a subject moving right"  # whitespace and line breaks made single spaces
    assert found[0].photo.name == "clip1.png" and found[0].mask is None
    assert found[2].photo is None and found[2].mask.name == "clip3.mask.png"


def test_a_clip_with_both_a_photo_and_a_mask_is_said_to_use_the_photo(tmp_path, monkeypatch):
    warned = []
    monkeypatch.setattr("vidbooth.reporting.warn", warned.append)
    folder = make_subject_clips(tmp_path / "clips", count=3, masks=())
    for name in ("clip1", "clip3"):
        (folder / f"{name}.mask.png").write_bytes((folder / f"{name}.png").read_bytes())
    examples = find_subject_clips(folder, "subject")
    assert all(example.photo is not None and example.mask is None for example in examples)
    assert warned == [f"clip1.mp4 and 1 more in {folder} have both a photo and a mask: the photo is used, the mask not"]


def test_a_folder_of_frames_is_a_clip_too(tmp_path):
    folder = tmp_path / "clips"
    frames = render_clip(Sprite("circle", "blue", "solid"), Motion("left"), 8, 64)[0]
    (folder / "walk").mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / "walk" / f"{index:03}.png")
    (folder / "walk.txt").write_text("a dog walking")
    Image.fromarray(frames[0]).save(folder / "walk.jpg")
    (found,) = find_subject_clips(folder, "dog")
    clip, photo = load_subject_clip(found, 4, 32)
    assert found.photo.name == "walk.jpg" and clip.shape == (4, 32, 32, 3) and photo.shape == (32, 32, 3)


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "clip2.txt").unlink(), "clip2.mp4 has no caption: write it in"),
    (lambda f: (f / "clip1.png").unlink(), "clip1.mp4 has no subject photo: add clip1.png"),
    (lambda f: (f / "clip1.txt").write_text("a dog moving right"), "does not contain 'subject'"),
    (lambda f: (f / "clip1.txt").write_text("two subjects"), "does not contain 'subject'"),
    (lambda f: (f / "clip1.txt").write_bytes(b"\xff\xfe\x00a"), "UTF-8"),
    (lambda f: (f / "clip1.gif").write_bytes(b"GIF89a"), "are both clips named 'clip1'"),
    # a .gif is a clip, never a photo: as its own photo it had been a clip of itself (mutation testing)
    (lambda f: [(f / "clip1.png").unlink(), (f / "clip1.mp4").rename(f / "clip1.gif")],
     "clip1.gif has no subject photo: add clip1.png"),
    # two of a kind: one had been taken without a word
    (lambda f: (f / "clip1.jpg").write_bytes((f / "clip1.png").read_bytes()),
     r"clip1.mp4 has 2 subject photos \(clip1.jpg, clip1.png\): keep one"),
    (lambda f: (f / "clip1.TXT").write_text("a subject"),
     r"clip1.mp4 has 2 captions \(clip1.TXT, clip1.txt\): keep one"),
    (lambda f: (f / "clip3.mask.jpg").write_bytes((f / "clip3.mask.png").read_bytes()),
     r"clip3.mp4 has 2 masks \(clip3.mask.jpg, clip3.mask.png\): keep one"),
])
def test_a_clip_without_what_it_needs_is_named_before_anything_loads(change, message, tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=3)
    change(folder)
    with pytest.raises(UserError, match=message):
        find_subject_clips(folder, "subject")


def test_captions_and_photos_of_no_clip_are_said_to_be_left_out(tmp_path, monkeypatch):
    """A clip of a kind vidbooth does not read (clip2.mpeg) had been left out, its caption and photo with it, unsaid."""
    warned = []
    monkeypatch.setattr("vidbooth.reporting.warn", warned.append)
    folder = make_subject_clips(tmp_path / "clips", count=3)
    (folder / "clip2.mp4").rename(folder / "clip2.mpeg")
    (folder / "notes.md").write_text("not a clip's")
    assert [c.clip.name for c in find_subject_clips(folder, "subject")] == ["clip1.mp4", "clip3.mp4"]
    assert warned == [f"clip2.png and 1 more file in {folder} go with no clip (a video of their name: .mp4, .mov, "
                      ".webm, .mkv, .avi, .m4v, .gif, or a folder of frames so named): they are left out"]
    (folder / "clip2.png").unlink()  # one file, and three: said in the number they are
    warned.clear()
    find_subject_clips(folder, "subject")
    (folder / "clip4.txt").write_text("a subject")
    (folder / "clip5.txt").write_text("a subject")
    find_subject_clips(folder, "subject")
    assert [line.split(" (")[0] for line in warned] == [f"clip2.txt in {folder} goes with no clip",
                                                        f"clip2.txt and 2 more files in {folder} go with no clip"]
    assert warned[0].endswith("it is left out") and warned[1].endswith("they are left out")


def test_every_clip_with_a_problem_is_counted(tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=3)
    for index in (1, 2, 3):
        (folder / f"clip{index}.txt").unlink()
    with pytest.raises(UserError, match=r"clip1.mp4 has no caption.*\(2 more clip\(s\) have a problem\)"):
        find_subject_clips(folder, "subject")


def test_a_missing_or_empty_folder_is_refused(tmp_path):
    with pytest.raises(UserError, match="not found"):
        find_subject_clips(tmp_path / "missing", "subject")
    with pytest.raises(UserError, match="no clips in"):
        find_subject_clips(tmp_path, "subject")


def test_a_mask_cuts_the_subject_out_of_the_first_frame_onto_white(tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=1, masks=(0,))
    (example,) = find_subject_clips(folder, "subject")
    frames, photo = load_subject_clip(example, 8, 64)
    assert frames.shape == (8, 64, 64, 3)
    red = (photo[..., 0] > 150) & (photo[..., 1] < 100) & (photo[..., 2] < 100)
    white = photo.min(axis=-1) > 235
    assert red.mean() > 0.3  # the subject fills the crop
    assert white[0].all() and white[-1].all() and white[:, 0].all() and white[:, -1].all()  # on white, with a margin
    assert red.mean() + white.mean() > 0.9  # and nothing of the background


def test_cut_out_centres_the_mask_in_a_square_with_a_margin():
    frame = np.zeros((40, 60, 3), np.uint8)
    frame[10:20, 5:25] = 7
    mask = np.zeros((40, 60), bool)
    mask[10:20, 5:25] = True
    photo = cut_out(frame, mask)
    assert photo.shape == (24, 24, 3)  # 20 px wide, 10% free on each side
    assert (photo[7:17, 2:22] == 7).all() and (photo == 7).sum() == 20 * 10 * 3 and (photo == 255).all(-1).sum() == 376


def _transparent_photo(path, opaque_alpha=255):
    """A 200x100 photo, transparent but for a red 30x20 subject at its left edge (as a background remover saves a
    subject off the middle), where a centre crop would keep none of it."""
    pixels = np.zeros((100, 200, 4), np.uint8)
    pixels[..., :3] = (0, 200, 0)  # the removed background's colour stays under alpha 0
    pixels[40:60, 5:35] = (220, 0, 0, opaque_alpha)
    Image.fromarray(pixels, "RGBA").save(path)
    return path


def test_a_photo_with_a_transparent_background_is_cut_out_around_its_subject(tmp_path):
    photo = np.asarray(load_subject_photo(_transparent_photo(tmp_path / "dog.png")))
    assert photo.shape == (36, 36, 3)  # a square around the 30 px subject, 10% free on each side
    red = (photo == (220, 0, 0)).all(-1)
    assert red.sum() == 30 * 20 and red[8:28, 3:33].all() and (photo[~red] == 255).all()


def test_a_photo_without_transparency_is_used_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 96, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "plain.png")
    Image.fromarray(np.dstack([pixels, np.full((64, 96), 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(np.asarray(load_subject_photo(tmp_path / "plain.png")), pixels)
    assert np.array_equal(np.asarray(load_subject_photo(tmp_path / "opaque.png")), pixels)


def test_a_photo_transparent_everywhere_is_refused(tmp_path):
    with pytest.raises(UserError, match="transparent everywhere"):
        load_subject_photo(_transparent_photo(tmp_path / "empty.png", opaque_alpha=0))


def test_a_folders_transparent_photo_is_cut_out_too(tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=1, masks=())
    _transparent_photo(folder / "clip1.png")
    (example,) = find_subject_clips(folder, "subject")
    photo = load_subject_clip(example, 8, 64)[1]
    red = (photo[..., 0] > 150) & (photo[..., 1] < 100)
    assert 0.41 < red.mean() < 0.52 and photo[0].min() > 235  # 600 of 36x36 pixels (46%), centred on white


def test_a_cut_out_subject_is_put_at_a_random_size_and_place_on_white():
    photo = np.full((40, 40, 3), 255, np.uint8)
    photo[4:36, 4:36] = (200, 30, 30)
    sides = []
    for seed in range(20):
        placed = place_at_random(photo, np.random.default_rng(seed))
        red = (placed[..., 0] > 150) & (placed[..., 1] < 100)
        ys, xs = np.nonzero(red)
        sides.append(xs.max() - xs.min() + 1)
        outside = np.ones(red.shape, bool)
        outside[max(ys.min() - 3, 0):ys.max() + 4, max(xs.min() - 3, 0):xs.max() + 4] = False
        assert placed.shape == photo.shape and (placed[outside] == 255).all()  # white but for resampling's edge
        assert abs((ys.max() - ys.min()) - (xs.max() - xs.min())) <= 1  # the shape kept
    assert 14 <= min(sides) < 24 and max(sides) >= 28  # from about half its size to all of it
    again = [place_at_random(photo, np.random.default_rng(3)) for _ in range(2)]
    assert np.array_equal(*again)


@pytest.mark.parametrize("mask, message", [
    (np.zeros((64, 64), np.uint8), "marks nothing"),
    (np.full((64, 128), 255, np.uint8), "is 128x64 but its clip's frames are 64x64"),
])
def test_a_mask_that_does_not_fit_is_refused(mask, message, tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=1, masks=(0,))
    Image.fromarray(mask).save(folder / "clip1.mask.png")
    (example,) = find_subject_clips(folder, "subject")
    with pytest.raises(UserError, match=message):
        load_subject_clip(example, 8, 64)


def test_the_digest_changes_with_a_caption_and_not_with_the_folder(tmp_path):
    folder = make_subject_clips(tmp_path / "clips", count=2)
    digest = folder_digest(find_subject_clips(folder, "subject"))
    moved = folder.rename(tmp_path / "moved")
    assert folder_digest(find_subject_clips(moved, "subject")) == digest
    (moved / "clip2.txt").write_text("a subject moving left")
    assert folder_digest(find_subject_clips(moved, "subject")) != digest


def test_the_digest_changes_with_a_clip_or_photo_replaced_under_the_same_name(tmp_path):
    """A --resume on a folder whose clip was replaced by another (a longer take of the same name) is refused."""
    from vidbooth.data.video import write_video

    folder = make_subject_clips(tmp_path / "clips", count=2, masks=())
    digest = folder_digest(find_subject_clips(folder, "subject"))
    longer = render_clip(Sprite("circle", "red", "solid"), Motion("left"), 16, 64, seed=5)[0]
    write_video(longer, folder / "clip1.mp4")
    replaced = folder_digest(find_subject_clips(folder, "subject"))
    assert replaced != digest
    Image.fromarray(np.zeros((96, 96, 3), np.uint8)).save(folder / "clip2.png")  # another photo of the subject
    assert folder_digest(find_subject_clips(folder, "subject")) not in (digest, replaced)


def test_companions_are_found_whatever_the_case_of_their_extension(tmp_path):
    """A camera's or Windows' 'clip1.TXT', 'clip2.PNG' and 'clip3.mask.PNG' had been 'has no caption: write it in
    clip1.txt' on a case-sensitive file system."""
    folder = make_subject_clips(tmp_path / "clips", count=3, masks=(2,))
    for old, new in (("clip1.txt", "clip1.TXT"), ("clip2.png", "clip2.PNG"), ("clip3.mask.png", "clip3.mask.PNG")):
        (folder / old).rename(folder / new)
    found = find_subject_clips(folder, "subject")
    assert [(c.photo and c.photo.name, c.mask and c.mask.name) for c in found] == [
        ("clip1.png", None), ("clip2.PNG", None), (None, "clip3.mask.PNG")]
    assert found[0].caption == "a subject moving right"


def test_a_clip_that_is_a_link_to_a_missing_file_is_not_left_out_unsaid(tmp_path):
    """It had been skipped without a word, its caption and photo with it: reading it now says it is missing."""
    folder = make_subject_clips(tmp_path / "clips", count=2)
    (folder / "clip2.mp4").unlink()
    (folder / "clip2.mp4").symlink_to(tmp_path / "gone.mp4")
    found = find_subject_clips(folder, "subject")
    assert [c.clip.name for c in found] == ["clip1.mp4", "clip2.mp4"]
    with pytest.raises(UserError, match="video not found"):
        load_subject_clip(found[1], 8, 64)


def test_the_digest_takes_a_frames_folders_images_and_any_name(tmp_path):
    """A link to a missing frame and a name that is not UTF-8 had been tracebacks (FileNotFoundError,
    UnicodeEncodeError) while the digest was taken, after the model had loaded."""
    import os

    folder = tmp_path / "clips"
    frames = render_clip(Sprite("circle", "blue", "solid"), Motion("left"), 4, 64)[0]
    name = os.fsdecode(b"walk\xff")
    (folder / name).mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / name / f"{index:03}.png")
    (folder / f"{name}.txt").write_text("a dog walking")
    Image.fromarray(frames[0]).save(folder / f"{name}.jpg")
    digest = folder_digest(find_subject_clips(folder, "dog"))
    (folder / name / "notes.md").write_text("not a frame")  # not a frame: not data
    assert folder_digest(find_subject_clips(folder, "dog")) == digest
    (folder / name / "004.png").symlink_to(tmp_path / "gone.png")
    assert folder_digest(find_subject_clips(folder, "dog")) != digest


def test_a_mask_saved_as_a_cut_out_marks_its_opaque_part(tmp_path):
    """Segmenters save the subject opaque on a transparent background: put on white, the whole frame had been the
    subject."""
    folder = make_subject_clips(tmp_path / "clips", count=1, masks=(0,))
    (example,) = find_subject_clips(folder, "subject")
    _, white_on_black = load_subject_clip(example, 8, 64)
    mask = np.asarray(Image.open(example.mask).convert("L")) > 127
    cut = np.zeros((*mask.shape, 4), np.uint8)
    cut[mask] = (255, 0, 255, 255)  # any colour, opaque; the rest transparent (and black)
    Image.fromarray(cut, "RGBA").save(example.mask)
    assert np.array_equal(load_subject_clip(example, 8, 64)[1], white_on_black)


def test_a_mask_with_alpha_that_is_opaque_everywhere_marks_its_white_part(tmp_path):
    """An RGBA mask whose alpha hides nothing is read by its grey, not as a cut-out of the whole frame (mutation
    testing)."""
    from vidbooth.data.subject_clips import _read_mask

    grey = np.zeros((32, 32), np.uint8)
    grey[8:16, 8:16] = 255
    Image.fromarray(np.dstack([grey, grey, grey, np.full((32, 32), 255, np.uint8)]), "RGBA").save(tmp_path / "m.png")
    assert _read_mask(tmp_path / "m.png", (32, 32)).sum() == 64


def test_a_caption_saved_with_a_byte_order_mark_is_read_without_it(tmp_path):
    """Notepad's UTF-8 starts with U+FEFF, which had stayed at the start of the caption the model was taught."""
    folder = make_subject_clips(tmp_path / "clips", count=1)
    (folder / "clip1.txt").write_bytes("a subject moving right".encode("utf-8-sig"))
    assert find_subject_clips(folder, "subject")[0].caption == "a subject moving right"


def test_the_digest_takes_a_clip_that_is_a_link_to_nothing(tmp_path):
    """Such a clip had been a FileNotFoundError traceback in the digest, before reading it could say it is missing."""
    folder = make_subject_clips(tmp_path / "clips", count=2)
    (folder / "clip2.mp4").unlink()
    (folder / "clip2.mp4").symlink_to(tmp_path / "gone.mp4")
    assert len(folder_digest(find_subject_clips(folder, "subject"))) == 16
