"""`vidbooth demo` end to end at reduced steps."""

import json

import pytest

from vidbooth.cli.app import main

VARIANTS = {"class_noun", "textual_inversion", "identity", "base_motion", "motion_adapter", "both"}
SCORES = {"image_similarity", "colour_correct", "shape_correct", "motion_correct", "motion_fidelity"}


def _run(out, base, *extra):
    return main(["demo", "--out", str(out), "--base", base, "--num-videos", "2", "--device", "cpu",
                 "--set", "subject_steps=2", "--set", "motion_steps=2", "--set", "num_inference_steps=2", *extra])


def _check(out):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["variants"]) == VARIANTS
    for scores in metrics["variants"].values():
        assert SCORES <= set(scores) and all(0.0 <= scores[k] <= 1.0 for k in SCORES - {"image_similarity"})
    for key in VARIANTS:
        assert (out / "videos" / f"{key}.mp4").is_file() and (out / "videos" / f"{key}.png").is_file()
    assert len(list((out / "inputs" / "photos").iterdir())) == 4 and (out / "inputs" / "motion.mp4").is_file()
    assert (out / "library" / "subjects" / "S%2A" / "manifest.json").is_file()
    return metrics


def test_demo_at_reduced_steps(tmp_path, isolated_home):
    out = tmp_path / "demo"
    assert _run(out, "nano", "--fast") == 0
    metrics = _check(out)
    assert metrics["base"] == "nano"
    assert set(metrics["seconds"]) == {"inputs", "train-subject", "train-motion", "generate+evaluate"}
    assert not (isolated_home / "subjects").exists()  # the user's library is untouched


@pytest.mark.slow
def test_demo_personalisation_helps_on_the_shipped_model(tmp_path, isolated_home):
    """The demo at its default training steps, with 4 videos per variant, on seed 1: each subject step raises
    image similarity, personalisation fixes the colour that the class noun alone gets wrong, and the motion
    adapter raises motion fidelity (8 videos: 0.32 -> 0.55)."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--seed", "1", "--num-videos", "4", "--device", "cpu"]) == 0
    scores = _check(out)["variants"]
    similarity = [scores[k]["image_similarity"] for k in ("class_noun", "textual_inversion", "identity")]
    assert similarity[0] + 0.5 < similarity[1] < similarity[2], similarity
    assert scores["class_noun"]["colour_correct"] <= 0.25 and scores["identity"]["colour_correct"] >= 0.75
    fidelity = [scores[k]["motion_fidelity"] for k in ("base_motion", "motion_adapter")]
    assert fidelity[0] + 0.1 < fidelity[1], fidelity
