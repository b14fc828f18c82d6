"""End to end: `vidbooth generate` through the real entry point, on a tiny model saved in diffusers layout."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidbooth.cli.app import main
from vidbooth.data.video import read_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]


def test_generate_writes_video_sheet_and_config(tiny_base_dirs, tmp_path):
    out = tmp_path / "out dir ü" / "clip.mp4"
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(out),
                 "--frames", "4", "--steps", "2", "--seed", "7", "--device", "cpu"])
    assert code == 0
    frames = read_video(out)
    assert frames.shape == (4, 32, 32, 3)
    sheet = out.with_suffix(".png")
    assert sheet.is_file()
    resolved = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert resolved["runtime"]["seed"] == 7 and resolved["sampling"]["num_frames"] == 4
    assert resolved["prompt"] == "a dog"


def test_several_videos_of_a_prompt_come_from_one_run_and_are_scored_against_its_config(tiny_base_dirs, tmp_path):
    """For several takes a user had looped over seeds, loading the model each time."""
    import numpy as np
    from PIL import Image

    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--frames", "3", "--steps", "2",
            "--seed", "7", "--device", "cpu"]
    assert main([*args, "--num-videos", "3", "--out", str(tmp_path / "take.mp4")]) == 0
    videos = [read_video(tmp_path / f"take-{k}.mp4") for k in (1, 2, 3)]
    assert not (tmp_path / "take.mp4").exists() and all(v.shape == (3, 32, 32, 3) for v in videos)
    assert np.abs(videos[0].astype(int) - videos[1].astype(int)).mean() > 1  # each its own noise
    assert np.asarray(Image.open(tmp_path / "take.png")).shape[:2] == (3 * 32, 3 * 32)  # a row per video
    assert yaml.safe_load((tmp_path / "take.yaml").read_text())["num_videos"] == 3
    assert main([*args, "--out", str(tmp_path / "one.mp4")]) == 0  # the first is the one video of that seed
    assert np.abs(read_video(tmp_path / "one.mp4").astype(int) - videos[0].astype(int)).max() <= 1
    assert main([*args, "--num-videos", "3", "--batch-size", "2", "--out", str(tmp_path / "less.mp4")]) == 0
    for k, video in enumerate(videos, start=1):  # fewer at once (less memory): the same videos (up to rounding)
        difference = np.abs(read_video(tmp_path / f"less-{k}.mp4").astype(int) - video.astype(int))
        # (torch 2.13: at most 2 levels, 0.011 on average; 2.12, the floor: 4 and 0.12; other noise: above 1)
        assert difference.max() <= 6 and difference.mean() < 0.25, (k, difference.max(), difference.mean())
    assert yaml.safe_load((tmp_path / "less.yaml").read_text())["batch_size"] == 2
    assert main([*args, "--num-videos", "3", "--batch-size", "0", "--out", str(tmp_path / "no.mp4")]) == 2
    from vidbooth.eval.jobs import generated_prompt

    assert generated_prompt(tmp_path / "take-2.mp4") == "a dog"  # evaluate's prompt, from take.yaml
    assert generated_prompt(tmp_path / "take-4.mp4") is None  # no fourth video in that run
    assert main([*args, "--num-videos", "0", "--out", str(tmp_path / "none.mp4")]) == 2


def test_generate_gif_with_recipe_and_set(tiny_base_dirs, tmp_path):
    out = tmp_path / "clip.gif"
    code = main(["generate", "--recipe", "tiny/generate", "--base", str(tiny_base_dirs["animatediff"]),
                 "--motion-adapter", str(tiny_base_dirs["animatediff"]) + "-motion-adapter",
                 "--set", "sampling.num_inference_steps=2", "--frames", "3", "--prompt", "a cat", "--out", str(out),
                 "--scheduler", "dpm++"])
    assert code == 0
    assert read_video(out).shape[0] == 3
    resolved = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert resolved["sampling"]["guidance_scale"] == 4.0  # from the recipe
    assert resolved["sampling"]["num_inference_steps"] == 2  # from --set


@pytest.mark.parametrize(
    "args, message",
    [
        (["--base", "/no/such/model"], "base model not found"),
        (["--motion-adapter", ""], "backbone.motion_adapter (--motion-adapter) is empty: give a MotionAdapter"),
        (["--frames", "0"], "at least 1"),
        (["--frames", "100000"], "sampling.num_frames (--num-frames) must be at most 1024, got 100000"),  # had loaded
        # nano: VAE 8 x UNet 4
        (["--height", "30"], "--height 30 must be a positive multiple of 32 for this model: use e.g. 32"),
        (["--width", "100000"], "--width 100000 is more than 8 times this model's native size (64): use at most 512"),
        (["--scheduler", "euler"], "unknown scheduler"),
        (["--out", "x.avi"], "must end in .mp4 or .gif"),
        # an unset shell variable: it had been named '.' (Path's reading of ''), with 2 videos a ValueError
        (["--out", ""], "out (--out) is empty (an unset shell variable?): give the video to write, .mp4 or .gif"),
        (["--out", "", "--num-videos", "2"], "out (--out) is empty (an unset shell variable?)"),
        (["--out", "videos/"], "--out videos/ must end in .mp4 or .gif"),
        (["--out", ".mp4"], "--out .mp4 has no name before .mp4: give one, such as video.mp4"),  # 'must end in .mp4'
        (["--out", "{tmp}"], "--out {tmp} is a folder: give a video file path, such as {tmp}/video.mp4"),
        (["--out", "{tmp}/" + "a" * 252 + ".mp4"], "a" * 252 + ".mp4 is 256 bytes, more than the 255"),  # a traceback
        (["--out", "{tmp}/" + "a" * 251 + ".gif"], "a" * 251 + ".yaml is 256 bytes, more than the 255 that file "
         "systems take (generate writes .gif, .png and .yaml files of that name): choose a shorter name"),
        (["--set", "sampling.nope=1"], "config key 'sampling.nope'"),
        (["--attention", "xformers"], "cannot run on cpu"),
        (["--base", "org/model"], "cannot fetch 'org/model' from the hub"),
        (["--out", "{tmp}/o.GIF", "--fps", "60"], "more than a GIF can show (50"),  # it had played at 10 fps
        # an unset shell variable: the video had been made without the motion, or with the default recipe
        (["--motion", ""], "motion (--motion) is empty (an unset shell variable?)"),
        (["--recipe", ""], "--recipe is empty (an unset shell variable?)"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, message):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    message = message.replace("{tmp}", str(tmp_path))
    code = main(["generate", "--prompt", "x", "--steps", "1", "--out", str(tmp_path / "o.mp4"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and message in " ".join(lines), err
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("taken", ["o.png", "o.yaml", "o.mp4"])
def test_an_output_a_folder_takes_is_refused_before_any_work(tmp_path, capsys, taken):
    """The video, its contact sheet or its config where a folder is: one line before sampling, nothing written."""
    (tmp_path / taken).mkdir()
    code = main(["generate", "--prompt", "x", "--base", "tiny", "--steps", "1", "--out", str(tmp_path / "o.mp4")])
    assert code == 2
    assert f"{tmp_path / taken} is a folder, and generate writes a file there" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == [taken]


def test_a_video_of_the_other_type_beside_the_output_is_not_replaced_silently(tiny_base_dirs, tmp_path, capsys):
    """a.mp4 and a.gif would share a.png and a.yaml: the second would take the first's config (which evaluate
    reads as the first's prompt). Regenerating the same file is fine."""
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main([*args, "--prompt", "a red dog", "--out", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "--prompt", "a red dog", "--out", str(tmp_path / "a.mp4")]) == 0
    assert main([*args, "--prompt", "a blue cat", "--out", str(tmp_path / "a.gif")]) == 2
    assert "a.mp4 is beside it and its contact sheet and config (a.png, a.yaml) would be replaced" in (
        capsys.readouterr().err)
    assert yaml.safe_load((tmp_path / "a.yaml").read_text())["prompt"] == "a red dog"
    assert not (tmp_path / "a.gif").exists()


def test_real_entry_point_reports_one_line_without_traceback(tmp_path):
    cmd = [sys.executable, "-m", "vidbooth", "generate", "--prompt", "x", "--base", str(tmp_path / "missing")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: base model not found") and "Traceback" not in result.stderr


def test_debug_raises_instead_of_one_line(tmp_path):
    from vidbooth.cli import app as cli_app
    from vidbooth.errors import UserError

    try:
        with pytest.raises(UserError, match="base model not found"):
            main(["--debug", "generate", "--prompt", "x", "--base", str(tmp_path / "missing")])
    finally:
        cli_app._state["debug"] = False


def test_help_lists_commands():
    result = subprocess.run([sys.executable, "-m", "vidbooth", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "generate" in result.stdout


ALL_COMMANDS = ["demo", "generate", "train-subject", "textual-inversion", "identity-adapter", "train-motion",
                "motion-adapter", "evaluate", "train-image-prompt", "pretrain", "list"]


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_help_shows_no_value_after_a_flag_and_names_what_each_takes(command, capsys):
    """`--fast` takes no value, so the help must not show one (`--fast <bool>` made `--fast true` look right); a
    flag that takes one names it (--steps N, --base MODEL), not typer's <str> or <int>; a positional argument shows
    its name alone (not `CLIPS <list[str]>`)."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out and "--help " in out and ("--set KEY=VALUE" in out or command == "list")
    assert re.findall(r"<(?:str|int|float|path|list\[\w+\])>", out) == []  # flags and positional arguments


@pytest.mark.parametrize("command", sorted(set(ALL_COMMANDS) - {"demo", "train-image-prompt", "pretrain", "list"}))
def test_a_bare_command_that_needs_inputs_shows_its_help_and_exits_2(command, capsys):
    assert main([command]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and f"{command} [OPTIONS]" in captured.err and "--set KEY=VALUE" in captured.err


@pytest.mark.parametrize("command, recipes", [("generate", "generate"), ("train-subject", "subject"),
                                              ("train-motion", "motion"), ("train-image-prompt", "image-prompt")])
def test_recipe_help_names_the_recipes_of_its_command(command, recipes, capsys):
    """The help had offered 'nano/generate, zeroscope/subject' to every command; train-motion refuses both."""
    assert main([command, "--help"]) == 0
    out = "".join(capsys.readouterr().out.split())  # wrapped anywhere, even at a hyphen
    shipped = sorted(path.parent.name for path in (ROOT / "recipes").glob(f"*/{recipes}.yaml"))
    assert "nano" in shipped and f"({','.join(f'{family}/{recipes}' for family in shipped)})" in out


def test_generate_on_nano_without_a_recipe_uses_nanos_own(tmp_path):
    """The default base, no --recipe: nano's sampling settings (10 steps, guidance 2), not the large models'."""
    out = tmp_path / "clip.mp4"
    assert main(["generate", "--prompt", "a red solid circle moving left", "--out", str(out), "--device", "cpu"]) == 0
    resolved = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert resolved["backbone"]["base"] == "nano"
    assert resolved["sampling"]["num_inference_steps"] == 10 and resolved["sampling"]["guidance_scale"] == 2.0
    assert resolved["runtime"]["precision"] == "fp32"  # also where auto would be fp16 (CUDA)
    assert read_video(out).shape == (8, 64, 64, 3)


def test_the_written_yaml_reruns_the_same_video_without_the_prompt_again(tiny_base_dirs, tmp_path):
    first = tmp_path / "first.mp4"
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(first),
                 "--frames", "3", "--steps", "2", "--seed", "11", "--device", "cpu"]) == 0
    again = tmp_path / "again.mp4"
    assert main(["generate", "--recipe", str(first.with_suffix(".yaml")), "--out", str(again)]) == 0
    assert (read_video(again) == read_video(first)).all()
    assert yaml.safe_load(again.with_suffix(".yaml").read_text())["prompt"] == "a dog"


@pytest.mark.parametrize("prompt", ["a dog under ${oc.env:HOME}", "a sign reading ${price} and \\${x}"])
def test_a_prompt_is_used_as_typed_and_its_yaml_reruns_it(tiny_base_dirs, tmp_path, prompt, monkeypatch):
    """OmegaConf had read '${...}' in a prompt as an interpolation: the environment went into the prompt, or the
    run failed, or the .yaml it wrote failed to load."""
    import vidbooth.engine.generate as generate_engine

    seen = []
    original = generate_engine.sample_videos
    monkeypatch.setattr(generate_engine, "sample_videos", lambda *a: seen.append(a[2]) or original(*a))
    first = tmp_path / "first.mp4"
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main([*args, "--prompt", prompt, "--out", str(first)]) == 0
    assert main(["generate", "--recipe", str(first.with_suffix(".yaml")), "--out", str(tmp_path / "again.mp4")]) == 0
    assert main([*args, "--set", f"prompt={prompt}", "--out", str(tmp_path / "set.mp4")]) == 0
    assert seen == [prompt] * 3
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["prompt"] != prompt  # escaped for OmegaConf


def test_no_prompt_and_no_recipe_is_one_line(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last == 'error: no prompt: pass --prompt "..." describing the video (or a --recipe that sets prompt)'
    assert not list(tmp_path.iterdir())


def test_an_adapter_scale_without_its_adapter_is_warned(tiny_base_dirs, tmp_path, capsys):
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out",
                 str(tmp_path / "a.mp4"), "--frames", "2", "--steps", "1", "--device", "cpu",
                 "--subject-scale", "0.5", "--motion-scale", "1"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: --subject-scale 0.5 has no effect without --subject" in err, err
    assert "--motion-scale" not in err  # 1, the default, says nothing
    code = main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out",
                 str(tmp_path / "b.mp4"), "--frames", "2", "--steps", "1", "--device", "cpu",
                 "--motion-scale", "0.5", "--image-prompt-scale", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "warning: --motion-scale 0.5 has no effect without --motion" in err, err
    assert "warning: --image-prompt-scale has no effect without --image-prompt" in err, err


def test_eta_with_a_scheduler_that_does_not_take_it_is_warned(tiny_base_dirs, tmp_path, capsys):
    """DPM-Solver++ has no eta: `--set sampling.eta=0.5` was ignored without a word."""
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--frames", "2", "--steps", "1",
            "--device", "cpu", "--set", "sampling.eta=0.5"]
    for scheduler, warned in (("dpm++", True), ("ddim", False)):
        assert main([*args, "--scheduler", scheduler, "--out", str(tmp_path / f"{scheduler}.mp4")]) == 0
        err = capsys.readouterr().err
        assert ("warning: sampling.eta 0.5 has no effect with --scheduler dpm++: only ddim takes it" in err) == warned


def test_a_negative_prompt_without_guidance_is_warned(tiny_base_dirs, tmp_path, capsys):
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--out", str(tmp_path / "a.mp4"),
            "--frames", "2", "--steps", "1", "--device", "cpu", "--negative-prompt", "blurry"]
    assert main([*args, "--guidance-scale", "1"]) == 0
    assert "warning: --negative-prompt has no effect at --guidance-scale 1" in capsys.readouterr().err
    assert main([*args, "--guidance-scale", "2"]) == 0
    assert "--negative-prompt" not in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    import vidbooth.engine.generate as engine

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "generate", interrupted)
    assert main(["generate", "--prompt", "a dog", "--out", str(tmp_path / "a.mp4")]) == 130
    assert capsys.readouterr().err.strip().endswith("error: interrupted")
    assert not list(tmp_path.iterdir())


def test_ctrl_c_under_a_launcher_is_told_by_the_first_process_only(tmp_path, monkeypatch, capsys):
    """A launcher passes Ctrl-C to every process: each had printed 'error (process N): interrupted'."""
    import vidbooth.engine.motion as engine

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train_motion", interrupted)
    clip = tmp_path / "c.mp4"
    clip.write_bytes(b"")
    for rank, told in (("1", ""), ("0", "error: interrupted\n")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        assert main(["train-motion", str(clip), "--name", "m"]) == 130
        assert capsys.readouterr().err == told


def _signalled_while_loading(monkeypatch, signum: int, in_a_finaliser: bool = False) -> None:
    """The signal arrives while the model loads; with `in_a_finaliser`, while an object is being finalised, where
    Python drops the KeyboardInterrupt it raises ('Exception ignored in ...') and the command would go on."""
    import gc
    import os

    import vidbooth.engine.backbone as backbone

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signum)
            sum(range(10_000))  # the handler runs here, inside __del__

    load = backbone.load_backbone_for

    def load_and_signal(*args, **kwargs):
        if in_a_finaliser:
            Finalised()
            gc.collect()
        else:
            os.kill(os.getpid(), signum)
        return load(*args, **kwargs)

    monkeypatch.setattr(backbone, "load_backbone_for", load_and_signal)


def test_sigterm_is_one_line_and_exit_143_and_writes_nothing(tmp_path, monkeypatch, capsys):
    import signal

    _signalled_while_loading(monkeypatch, signal.SIGTERM)
    code = main(["generate", "--prompt", "a dog", "--base", "tiny", "--steps", "1", "--out", str(tmp_path / "a.mp4")])
    assert code == 143 and capsys.readouterr().err.strip().endswith("error: stopped by SIGTERM")
    assert not list(tmp_path.iterdir())


def test_a_ctrl_c_that_python_drops_in_a_finaliser_still_stops_the_command(tmp_path, monkeypatch, capsys):
    import signal

    _signalled_while_loading(monkeypatch, signal.SIGINT, in_a_finaliser=True)
    shown = []  # Python's 'Exception ignored in ...: KeyboardInterrupt' traceback (its default unraisablehook)
    monkeypatch.setattr(sys, "unraisablehook", shown.append)
    code = main(["generate", "--prompt", "a dog", "--base", "tiny", "--steps", "1", "--out", str(tmp_path / "a.mp4")])
    assert code == 130 and capsys.readouterr().err.strip().endswith("error: interrupted")
    assert not list(tmp_path.iterdir())
    assert shown == [] and sys.unraisablehook == shown.append  # noted and acted on: no traceback as well


def test_only_stops_dropped_in_a_finaliser_are_kept_from_pythons_unraisable_hook(monkeypatch):
    """(mutation testing) A SIGTERM's `Interrupted` dropped in a finaliser is noted and acted on as Ctrl-C's is;
    any other error there still reaches the hook that was in place."""
    import gc

    from vidbooth.cli import app
    from vidbooth.errors import Interrupted

    shown = []
    monkeypatch.setattr(sys, "unraisablehook", shown.append)

    class Raising:
        def __init__(self, exc):
            self.exc = exc

        def __del__(self):
            raise self.exc

    with app._stop_signals():
        for exc in (Interrupted("stopped by SIGTERM", 143), KeyboardInterrupt(), ValueError("a bug")):
            Raising(exc)
            gc.collect()
    assert [type(unraisable.exc_value) for unraisable in shown] == [ValueError]


_SIGINT_AS_IT_EXITS = """
import atexit, os, signal, sys
from vidbooth.cli import app

app.main = lambda: 0  # a command that did its work and told it
atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), sum(range(10**6))))  # Ctrl-C as the interpreter ends
app.run()
"""


def test_a_ctrl_c_after_the_outcome_is_told_changes_neither_the_exit_code_nor_the_output():
    """A Ctrl-C 0.1-0.4 s after 'saved motion', while the interpreter shut down, had ended the process by SIGINT
    (status 130, no word) after a training that was saved and told."""
    done = subprocess.run([sys.executable, "-c", _SIGINT_AS_IT_EXITS], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")


def test_a_ctrl_c_dropped_while_the_videos_are_written_still_stops_the_command(tmp_path, monkeypatch, capsys):
    """Writing is the last phase: no later phase would see the recorded stop, and the command had exited 0."""
    import gc
    import os
    import signal

    import vidbooth.data.video as video

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))  # the handler runs here, inside __del__, where Python drops what it raises

    encode = video._encode

    def encode_and_signal(*args, **kwargs):
        Finalised()
        gc.collect()
        return encode(*args, **kwargs)

    monkeypatch.setattr(video, "_encode", encode_and_signal)
    code = main(["generate", "--prompt", "a dog", "--base", "tiny", "--steps", "1", "--out", str(tmp_path / "a.mp4")])
    assert code == 130 and capsys.readouterr().err.strip().endswith("error: interrupted")


def test_a_sigterm_that_a_library_turns_into_its_own_error_still_stops_the_command(tmp_path, monkeypatch, capsys):
    """imageio and diffusers catch Exception around their lazy imports and raise another error: the stop had come
    out as a traceback, exit 1, naming the output file."""
    import os
    import signal

    import vidbooth.engine.backbone as backbone

    def a_lazy_import(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(10_000))
        except Exception as exc:
            raise RuntimeError("Failed to import diffusers.models.autoencoders") from exc

    monkeypatch.setattr(backbone, "load_backbone_for", a_lazy_import)
    code = main(["generate", "--prompt", "a dog", "--base", "tiny", "--steps", "1", "--out", str(tmp_path / "a.mp4")])
    assert code == 143 and capsys.readouterr().err.strip().endswith("error: stopped by SIGTERM")
    assert not list(tmp_path.iterdir())


def test_a_second_generate_of_the_same_output_is_refused_while_the_first_runs(tiny_base_dirs, tmp_path, capsys):
    """Two runs of one --out had each renamed its files in: a video of one beside the other's sheet and config."""
    import os

    from vidbooth.fileio import lock_beside

    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a dog", "--frames", "2", "--steps", "1"]
    with lock_beside(tmp_path / ".take", lambda owner: owner):  # another generate of take.mp4, of take.gif, ...
        for out in ("take.mp4", "take.gif"):
            assert main([*args, "--num-videos", "2", "--out", str(tmp_path / out)]) == 2
            assert capsys.readouterr().err.strip().splitlines()[-1] == (
                f"error: another generate (pid {os.getpid()}) is writing {tmp_path / 'take'}.* (--out "
                f"{tmp_path / out}): wait for it to finish, or give another --out")
        assert main([*args, "--out", str(tmp_path / "other.mp4")]) == 0  # another output: free
    assert main([*args, "--out", str(tmp_path / ("x" * 250 + ".mp4"))]) == 0  # a long name: the lock's is cut
    for path in tmp_path.glob("x*"):
        path.unlink()
    assert main([*args, "--out", str(tmp_path / "take.mp4")]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["other.mp4", "other.png", "other.yaml", "take.mp4",
                                                                "take.png", "take.yaml"]  # the lock files are gone


def test_files_beside_the_output_that_no_video_owns_are_not_replaced(tiny_base_dirs, tmp_path, capsys):
    """`generate --recipe r/corgi.yaml --out r/corgi.mp4` had overwritten the recipe (and a corgi.png beside it)."""
    recipe = tmp_path / "corgi.yaml"
    recipe.write_text(f"# my recipe\nbackbone:\n  base: {tiny_base_dirs['unet3d']}\nprompt: a corgi\n")
    code = main(["generate", "--recipe", str(recipe), "--out", str(tmp_path / "corgi.mp4"), "--frames", "2",
                 "--steps", "1", "--device", "cpu"])
    assert code == 2 and f"{recipe} exists and no video beside it was written with it" in capsys.readouterr().err
    assert recipe.read_text().startswith("# my recipe") and not (tmp_path / "corgi.mp4").exists()


def test_a_video_of_the_other_type_in_other_letters_is_not_replaced(tiny_base_dirs, tmp_path, capsys):
    args = ["generate", "--base", str(tiny_base_dirs["unet3d"]), "--frames", "2", "--steps", "1", "--device", "cpu"]
    assert main([*args, "--prompt", "a red dog", "--out", str(tmp_path / "A.GIF")]) == 0
    assert main([*args, "--prompt", "a blue cat", "--out", str(tmp_path / "A.mp4")]) == 2
    assert "A.GIF is beside it" in capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "A.yaml").read_text())["prompt"] == "a red dog"


def test_a_folder_the_file_system_will_not_write_is_refused_before_sampling(tmp_path, capsys, monkeypatch):
    """Permissions can say yes where the file system says no (/sys for root): the video was refused after sampling,
    naming its temporary file."""
    import tempfile

    import vidbooth.engine.backbone

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(vidbooth.engine.backbone, "load_backbone", lambda *a, **k: pytest.fail("the model loaded"))
    assert main(["generate", "--prompt", "x", "--out", str(tmp_path / "v.mp4")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: output folder is not writable: {tmp_path}; choose another --out")


def test_the_videos_are_sampled_with_the_seed_negative_prompt_and_eta_given(monkeypatch):
    """(mutation testing: a fixed seed, a dropped negative prompt or eta had passed every test)"""
    from vidbooth.config.schema import GenerateConfig
    from vidbooth.engine import generate as generate_engine
    from vidbooth.engine import sampling

    seen = {}
    monkeypatch.setattr(sampling, "sample_video", lambda bb, prompts, **kw: seen.update(kw, prompts=prompts))
    cfg = GenerateConfig(prompt="a dog")
    cfg.runtime.seed, cfg.sampling.eta, cfg.num_videos, cfg.batch_size = 1234, 0.3, 2, 1
    generate_engine.sample_videos(object(), cfg, "a dog", "blurry")
    assert seen["prompts"] == ["a dog", "a dog"] and seen["negative_prompt"] == "blurry" and seen["eta"] == 0.3
    assert seen["batch_size"] == 1  # the same videos either way: only this says --batch-size is not ignored
    assert seen["generator"].initial_seed() == 1234


_SIGTERM_WHILE_TELLING = """
import os, signal, sys
import vidbooth.engine.generate as engine
import vidbooth.reporting as reporting
from vidbooth.cli.app import main
from vidbooth.errors import UserError

def failing(cfg):
    raise UserError("it failed")

told = reporting.error
def error(message):
    os.kill(os.getpid(), signal.SIGTERM)  # as a launcher sends it on seeing another process die
    told(message)

engine.generate, reporting.error = failing, error
sys.exit(main(["generate", "--prompt", "a dog", "--out", sys.argv[1]]))
"""


def test_a_signal_while_the_outcome_is_told_waits_for_it(tmp_path):
    """Under accelerate launch another process's death brings SIGTERM: arriving after the command's handlers were
    put back, it had ended the process before its error line (exit -15, nothing said)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_TELLING, str(tmp_path / "a.mp4")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().endswith("error: it failed"), (done.returncode, done.stderr)


def test_a_library_that_is_a_file_does_not_stop_a_generate_without_subjects(tiny_base_dirs, tmp_path, monkeypatch,
                                                                           capsys):
    """The warning of a learned subject's name left out of --subject lists the library: it had refused the run."""
    library = tmp_path / "library"
    library.write_text("not a folder")
    monkeypatch.setenv("VIDBOOTH_HOME", str(library))
    assert main(["generate", "--base", str(tiny_base_dirs["unet3d"]), "--prompt", "a sks dog", "--frames", "2",
                 "--steps", "1", "--out", str(tmp_path / "x.mp4")]) == 0
    assert "learned subject" not in capsys.readouterr().err


def test_a_learned_subjects_name_is_warned_of_only_without_its_subject(monkeypatch, capsys):
    """Given with --subject in another case, it is given; an accent typed as two characters is the same name."""
    from vidbooth import library
    from vidbooth.engine.generate import _warn_of_subjects_left_out

    monkeypatch.setattr(library, "names_at_rest", lambda kind: ["S*", "caf\u00e9"])
    _warn_of_subjects_left_out("a s* dog", ["S*"])
    _warn_of_subjects_left_out("a cafe\u0301 cat and S*", ["s*"])
    err = capsys.readouterr().err
    assert err.count("a learned subject") == 1 and "the prompt names caf\u00e9, a learned subject" in err
