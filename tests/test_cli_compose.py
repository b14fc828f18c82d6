"""End to end: train-subject and train-motion on a tiny base, then generate with both."""

import numpy as np
import pytest
import yaml

from vidbooth.cli.app import main
from vidbooth.data.video import read_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--device", "cpu", "--set", "preview.enabled=false"]


def _train(base, photos, clip, subject="S*", motion="M"):
    assert main(["train-subject", str(photos), "--name", subject, "--class-noun", "ball", "--base", str(base),
                 "--ti-steps", "2", "--identity-steps", "2", *FAST]) == 0
    assert main(["train-motion", str(clip), "--name", motion, "--base", str(base), "--steps", "2",
                 "--no-preview", "--device", "cpu"]) == 0


def test_generate_with_subject_and_motion(tiny_base_dirs, world_inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIDBOOTH_QUIET")
    base = tiny_base_dirs["unet3d"]
    _train(base, *world_inputs)
    out = tmp_path / "both.mp4"
    args = ["generate", "--base", str(base), "--subject", "S*", "--motion", "M", "--prompt", "a ball rolling",
            "--frames", "4", "--steps", "2", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: the prompt lacks the subject token 'S*'" in err and "a S* ball rolling" in err
    assert "with subject S* (pseudo-word, identity adapter at 1) and motion M (at 1)\n" in err  # what was applied
    assert read_video(out).shape == (4, 32, 32, 3)
    # the adapters change the video; at scale 0 both adapters are off and only the pseudo-word remains
    assert main([*args, "--out", str(tmp_path / "off.mp4"), "--subject-scale", "0", "--motion-scale", "0"]) == 0
    assert not np.array_equal(read_video(out), read_video(tmp_path / "off.mp4"))
    assert main(["generate", "--base", str(base), "--prompt", "a S* ball rolling", "--subject", "S*", "--frames", "4",
                 "--steps", "2", "--device", "cpu", "--subject-scale", "0", "--out", str(tmp_path / "ti.mp4")]) == 0
    assert np.array_equal(read_video(tmp_path / "off.mp4"), read_video(tmp_path / "ti.mp4"))
    # the config beside a video records what it was made with; a rerun whose subject changed since says so
    written = yaml.safe_load((tmp_path / "both.yaml").read_text())
    assert sorted(written["learned_files"]) == ["motion M", "subject S*"]
    written["learned_files"]["subject S*"] = "0" * 16
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(written))
    capsys.readouterr()
    assert main(["generate", "--recipe", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "rerun.mp4")]) == 0
    err = capsys.readouterr().err
    assert ("warning: subject 'S*' was retrained or replaced since this config was written: the video will differ "
            "from the one made with it") in err and "motion 'M' was" not in err
    assert np.array_equal(read_video(out), read_video(tmp_path / "rerun.mp4"))  # the same files in fact: the same

    # retrained by another run while the model loaded: what was loaded may mix the two, and the config name the first
    import json

    from vidbooth import library
    from vidbooth.engine import backbone as backbone_module

    load = backbone_module.load_backbone_for

    def load_while_retrained(*args, **kwargs):
        manifest = library.artifact_dir("subject", "S*") / library.MANIFEST
        manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"trained": "again"}))
        return load(*args, **kwargs)

    monkeypatch.setattr(backbone_module, "load_backbone_for", load_while_retrained)
    assert main([*args, "--out", str(tmp_path / "mixed.mp4")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: subject 'S*' was replaced while generate loaded it (retrained by another run?): run generate again")
    assert not list(tmp_path.glob("mixed*")) and not list(tmp_path.glob(".mixed*"))
    monkeypatch.setattr(backbone_module, "load_backbone_for", load)
    from vidbooth.engine import compose

    personalise = compose.apply_personalisation
    for kind, name, damage in (("motion", "M", lambda text: text.replace("{", '{"trained": "again", ', 1)),
                               ("subject", "S*", lambda text: "{damaged")):  # the motion; one caught mid-rewrite

        def loaded_then_changed(*args, kind=kind, name=name, damage=damage, **kwargs):
            applied = personalise(*args, **kwargs)
            manifest = library.artifact_dir(kind, name) / library.MANIFEST
            manifest.write_text(damage(manifest.read_text()))
            return applied

        monkeypatch.setattr(compose, "apply_personalisation", loaded_then_changed)
        assert main([*args, "--out", str(tmp_path / "mixed.mp4")]) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"error: {kind} '{name}' was replaced while generate loaded it (retrained by another run?): run generate "
            "again")


def test_unknown_names_and_mismatched_bases(tiny_base_dirs, world_inputs, tmp_path, capsys, monkeypatch):
    photos, clip = world_inputs
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", "--base",
                 str(tiny_base_dirs["unet3d"]), "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0
    assert main(["train-motion", str(clip), "--name", "M", "--base", str(tiny_base_dirs["animatediff"]),
                 "--motion-adapter", str(tiny_base_dirs["animatediff"]) + "-motion-adapter", "--steps", "1",
                 "--no-preview", "--device", "cpu"]) == 0
    capsys.readouterr()
    out = str(tmp_path / "x.mp4")
    assert main(["generate", "--prompt", "x", "--subject", "dog", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "unknown subject 'dog'" in err and "known subjects: S*" in err
    assert main(["generate", "--prompt", "x", "--motion", "dance", "--out", out]) == 2
    assert "known motions: M" in capsys.readouterr().err
    # a learned subject's pseudo-word in the prompt without --subject: the video would lack the subject unsaid
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a s* ball, S*", "--frames", "2",
                 "--steps", "1", "--out", str(tmp_path / "y.mp4")]) == 0
    assert capsys.readouterr().err.count("warning: the prompt names S*, a learned subject, without --subject 'S*': "
                                         "the video will not show the subject; add --subject 'S*' to show it") == 1
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a xS* ball", "--frames", "2",
                 "--steps", "1", "--out", str(tmp_path / "y.mp4")]) == 0
    assert "a learned subject" not in capsys.readouterr().err  # not the word the tokenizer reads there
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "x", "--subject", "S*",
                 "--motion", "M", "--steps", "1", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "subject 'S*'" in err and "motion 'M'" in err and "cannot be combined" in err
    # a subject used on another base than it was learned on
    assert main(["generate", "--base", str(tiny_base_dirs["animatediff"]), "--motion-adapter",
                 str(tiny_base_dirs["animatediff"]) + "-motion-adapter", "--prompt", "x", "--subject", "S*",
                 "--steps", "1", "--out", out]) == 2
    assert "subject 'S*' was learned on" in capsys.readouterr().err
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    assert main(["generate", "--prompt", "x", "--subject", "S*", "--motion", "M", "--steps", "1", "--out", out]) == 2
    err = capsys.readouterr().err  # learned on two bases: no base is taken from either
    assert "using base" not in err and "subject 'S*'" in err and "motion 'M'" in err and "cannot be combined" in err
    assert not (tmp_path / "x.mp4").exists()


def test_a_subject_learned_on_an_image_model_goes_with_any_motion_module_on_it(tiny_base_dirs, world_inputs, tmp_path,
                                                                              capsys):
    """AnimateDiff: personalise the image model, then animate it with a motion module and no further tuning. The
    fingerprint of the image model with its motion module had refused such a subject."""
    from vidbooth.engine.tiny import motion_adapter_folder, save_tiny_backbone

    photos, clip = world_inputs
    base = str(tiny_base_dirs["animatediff"])
    adapter = base + "-motion-adapter"
    other_adapter = str(motion_adapter_folder(save_tiny_backbone(tmp_path / "other", "animatediff", seed=1)))
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", "--base", base,
                 "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0  # the image model alone
    assert main(["train-motion", str(clip), "--name", "M", "--base", base, "--motion-adapter", adapter, "--steps", "1",
                 "--no-preview", "--device", "cpu"]) == 0
    generate = ["generate", "--base", base, "--prompt", "a S* ball", "--subject", "S*", "--frames", "2", "--steps", "1",
                "--device", "cpu"]
    assert main([*generate, "--motion", "M", "--motion-adapter", adapter, "--out", str(tmp_path / "both.mp4")]) == 0
    assert main([*generate, "--motion-adapter", other_adapter, "--out", str(tmp_path / "other.mp4")]) == 0
    assert main([*generate, "--out", str(tmp_path / "zero-shot.mp4")]) == 0
    without_base = ["generate", *generate[3:], "--motion", "M", "--out", str(tmp_path / "learned.mp4")]
    assert main(without_base) == 0  # the image model both were learned on, with the motion's adapter
    written = yaml.safe_load((tmp_path / "learned.yaml").read_text())["backbone"]
    assert (written["base"], written["motion_adapter"]) == (base, adapter)
    capsys.readouterr()
    assert main([*generate, "--motion", "M", "--motion-adapter", other_adapter, "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err  # a motion goes only with the motion module it was learned in
    assert f"motion 'M' was learned on {base} (fingerprint " in err and f"not on {base} as loaded now" in err
    assert f"load it as it was learned with (--motion-adapter {adapter}), or retrain it on this base" in err
    assert main([*generate[:2], str(tiny_base_dirs["unet3d"]), *generate[3:], "--out", str(tmp_path / "x.mp4")]) == 2
    assert f"use --base {base}, or retrain it on this base" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_without_base_the_base_they_were_learned_on_is_used(
    tiny_base_dirs, world_inputs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    photos, clip = world_inputs
    base = str(tiny_base_dirs["animatediff"])
    adapter = base + "-motion-adapter"
    on_base = ["--base", base, "--motion-adapter", adapter]
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", *on_base,
                 "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0
    assert main(["train-motion", str(clip), "--name", "M", *on_base, "--steps", "1", "--no-preview",
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    out = tmp_path / "x.mp4"
    generate = ["generate", "--prompt", "a S* ball", "--subject", "S*", "--motion", "M", "--frames", "2",
                "--steps", "1", "--device", "cpu", "--out", str(out)]
    assert main(generate) == 0  # no --base: nano would be refused, as the adapters were learned on another base
    assert f"using base {base}, on which subject S* and motion M were learned" in capsys.readouterr().err
    written = yaml.safe_load(out.with_suffix(".yaml").read_text())["backbone"]
    assert (written["base"], written["motion_adapter"]) == (base, adapter)
    assert main(["identity-adapter", str(photos), "--name", "S*", "--overwrite", "--steps", "1", *FAST]) == 0
    assert main([*generate, "--set", "backbone.motion_adapter=/no/such/adapter"]) == 2  # a --set given is kept
    assert "/no/such/adapter" in capsys.readouterr().err
    assert main([*generate, "--base", str(tiny_base_dirs["unet3d"])]) == 2  # a --base given is kept
    assert "was learned on" in capsys.readouterr().err
    recipe = tmp_path / "other.yaml"  # a recipe's base is kept too, as a shipped one's hub id: said before it loads
    recipe.write_text("backbone:\n  base: tiny\n")
    assert main([*generate, "--recipe", str(recipe)]) == 2
    assert (f"recipe {recipe} sets the base tiny, not {base}, on which subject S* and motion M were learned: add "
            f"--base {base} to use that one") in capsys.readouterr().err
    assert main(["identity-adapter", str(photos), "--name", "S*", "--overwrite", "--steps", "1", "--recipe",
                 str(recipe), *FAST]) == 2
    assert f"recipe {recipe} sets the base tiny, not {base}, on which subject S* was learned" in capsys.readouterr().err
    recipe.write_text(f"backbone:\n  base: {base}\n  motion_adapter: {adapter}\n")
    assert main([*generate, "--recipe", str(recipe)]) == 0
    assert "sets the base" not in capsys.readouterr().err


def test_a_multi_vector_subject_is_spelled_out_in_the_negative_prompt_too(
    tiny_base_dirs, world_inputs, monkeypatch, tmp_path
):
    import vidbooth.engine.generate as generate_engine

    base, (photos, _) = tiny_base_dirs["unet3d"], world_inputs
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", "--base", str(base),
                 "--num-vectors", "2", "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0
    sampled = []
    monkeypatch.setattr(generate_engine, "sample_videos", lambda bb, cfg, prompt, negative, image_prompt=None:
                        sampled.append((prompt, negative)) or np.zeros((1, 2, 16, 16, 3), dtype=np.uint8))
    assert main(["generate", "--base", str(base), "--subject", "S*", "--prompt", "a S* ball", "--negative-prompt",
                 "S* blurred", "--out", str(tmp_path / "v.gif"), "--device", "cpu"]) == 0
    assert sampled == [("a S* S*_1 ball", "S* S*_1 blurred")]  # the encoder sees both rows in both prompts


def test_an_artifact_altered_after_training_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """A tensor file that no longer matches its manifest's hash (or a renamed folder, a damaged manifest) had been
    found only once the base had loaded: a minute on a large model."""
    import torch
    from safetensors.torch import save_file

    from vidbooth import library

    with library.staged_artifact("motion", "M") as stage:
        save_file({"w": torch.zeros(3)}, str(stage / "adapter.safetensors"))
        library.write_json(stage / library.MANIFEST, {"name": "M", "kind": "motion", "base": "nano"})
    save_file({"w": torch.ones(3)}, str(library.artifact_dir("motion", "M") / "adapter.safetensors"))

    def loading(*args, **kwargs):
        raise AssertionError("the base model was loaded")

    monkeypatch.setattr("vidbooth.engine.backbone.load_backbone_for", loading)
    assert main(["generate", "-p", "a dog", "--motion", "M", "--out", str(tmp_path / "out.mp4")]) == 2
    err = capsys.readouterr().err
    assert "adapter.safetensors does not match its manifest hash (modified or damaged)" in err and err.count("\n") == 1
    assert not (tmp_path / "out.mp4").exists()


def test_without_base_a_learned_on_base_moved_away_is_named_as_such(
    tiny_base_dirs, world_inputs, tmp_path, capsys
):
    """The base the subject was learned on, taken when no --base is given, had been refused as 'base model not
    found: X (--base)', though no --base was given."""
    import shutil

    photos, _ = world_inputs
    base = tmp_path / "my-base"
    shutil.copytree(tiny_base_dirs["unet3d"], base)
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", "--base", str(base),
                 "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0
    base.rename(tmp_path / "moved-base")
    capsys.readouterr()
    out = tmp_path / "x.mp4"
    generate = ["generate", "--prompt", "a S* ball", "--subject", "S*", "--frames", "2", "--steps", "1",
                "--device", "cpu", "--out", str(out)]
    assert main(generate) == 2
    err = capsys.readouterr().err
    assert err == (f"error: the base {base}, on which subject S* was learned, is no longer there: move it back, "
                   f"or give its new place with --base\n")
    assert not out.exists()
    assert main([*generate, "--base", str(tmp_path / "moved-base")]) == 0  # the same weights, at their new place
    assert out.exists()


def test_without_base_a_learned_on_motion_adapter_moved_away_is_named_as_such(
    tiny_base_dirs, world_inputs, tmp_path, capsys
):
    """And a --motion-adapter given for it is taken: the check is of what the artifacts' record still supplies."""
    import shutil

    photos, _ = world_inputs
    base = str(tiny_base_dirs["animatediff"])
    adapter = tmp_path / "my-adapter"
    shutil.copytree(base + "-motion-adapter", adapter)
    assert main(["train-subject", str(photos), "--name", "S*", "--class-noun", "ball", "--base", base,
                 "--motion-adapter", str(adapter), "--ti-steps", "1", "--identity-steps", "1", *FAST]) == 0
    adapter.rename(tmp_path / "moved-adapter")
    capsys.readouterr()
    generate = ["generate", "--prompt", "a S* ball", "--subject", "S*", "--frames", "2", "--steps", "1",
                "--device", "cpu", "--out", str(tmp_path / "x.mp4")]
    assert main(generate) == 2
    assert capsys.readouterr().err == (f"error: the motion adapter {adapter}, on which subject S* was learned, is no "
                                       "longer there: move it back, or give its new place with --motion-adapter\n")
    assert main([*generate, "--motion-adapter", str(tmp_path / "moved-adapter")]) == 0
