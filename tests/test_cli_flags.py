"""Every flag of a command reaches the config key it names, with its own value: the engine is replaced by one that
keeps the config it is given (no model loads). A flag dropped, or given another flag's value, had gone unseen
where a test passed the same number to both or the default to one."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import typer

from tests.badinputs import write_photos
from vidbooth.cli.app import main
from vidbooth.library import MANIFEST, staged_artifact, write_json

RUNTIME = {"--base": ("backbone.base", "tiny"), "--device": ("runtime.device", "cpu"),
           "--precision": ("runtime.precision", "bf16"), "--attention": ("runtime.attention", "math")}


def _config_given_to(engine: str, argv: list[str], monkeypatch):
    given = []

    def keep(cfg, *args, **kwargs):
        given.append(cfg)
        raise typer.Exit(0)

    monkeypatch.setattr(engine, keep)
    assert main(argv) == 0
    return given[0]


def _value(cfg, key: str):
    return functools.reduce(getattr, key.split("."), cfg)


def _check(cfg, expected: dict[str, tuple[str, object]]) -> None:
    got = {flag: _value(cfg, key) for flag, (key, _) in expected.items()}
    assert got == {flag: value for flag, (_, value) in expected.items()}


def _argv(flags: dict[str, tuple[str, object]]) -> list[str]:
    argv = []
    for flag, (_, value) in flags.items():
        if value is True or value is False:
            argv.append(flag)
        elif isinstance(value, list):  # one item here: a caption, a metric
            argv += [flag, ",".join(value)]
        else:
            argv += [flag, str(value)]
    return argv


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"read by the engine, not by the command line")
    return path


def test_train_motion_flags_reach_their_keys(clip, monkeypatch, isolated_home):
    flags = RUNTIME | {
        "--name": ("name", "wave"), "--caption": ("captions", ["a person waving"]),
        "--class-noun": ("class_noun", "person"), "--steps": ("train.steps", 7), "--lr": ("train.lr", 0.002),
        "--batch-size": ("train.batch_size", 3), "--checkpoint-every": ("train.checkpoint_every", 5),
        "--num-frames": ("data.num_frames", 6), "--fps": ("data.fps", 12.5), "--resolution": ("data.resolution", 96),
        "--appearance-guidance": ("appearance.guidance", True), "--image-encoder": ("appearance.encoder", "vae"),
        "--p-image-zero": ("appearance.p_image_zero", 0.3), "--no-preview": ("preview.enabled", False),
        "--overwrite": ("overwrite", True), "--seed": ("train.seed", 9),
        "--gradient-checkpointing": ("train.gradient_checkpointing", True),
    }
    cfg = _config_given_to("vidbooth.engine.motion.train_motion", ["train-motion", str(clip), *_argv(flags)],
                           monkeypatch)
    _check(cfg, flags)
    assert cfg.runtime.seed == 9 and cfg.clips == [str(clip)]
    stride = _config_given_to("vidbooth.engine.motion.train_motion",
                              ["train-motion", str(clip), "--name", "m", "--stride", "3", "--resume"], monkeypatch)
    assert stride.data.stride == 3 and stride.resume is True


def test_train_subject_flags_reach_their_keys(tmp_path, monkeypatch, isolated_home):
    photos = write_photos(tmp_path / "photos")
    flags = RUNTIME | {
        "--name": ("name", "S*"), "--class-noun": ("class_noun", "dog"),
        "--num-vectors": ("textual_inversion.num_vectors", 2), "--hidden-ratio": ("identity.hidden_ratio", 0.25),
        "--ti-steps": ("textual_inversion.train.steps", 11), "--identity-steps": ("identity.train.steps", 13),
        "--resolution": ("data.resolution", 96), "--flip": ("data.flip", True),
        "--scale-jitter": ("data.scale_jitter", 0.15), "--prior-preservation": ("prior.enabled", True),
        "--class-images": ("prior.class_images", str(tmp_path / "dogs")),
        "--num-class-images": ("prior.num_class_images", 5),
        "--prior-weight": ("prior.weight", 0.5), "--no-preview": ("preview.enabled", False),
        "--overwrite": ("overwrite", True), "--seed": ("runtime.seed", 4),
    }
    flags["--base"] = ("backbone.base", "nano")  # nano's recipe: its values must give way to the flags'
    cfg = _config_given_to("vidbooth.engine.subject.train_subject", ["train-subject", str(photos), *_argv(flags)],
                           monkeypatch)
    _check(cfg, flags)
    both = [cfg.textual_inversion.train, cfg.identity.train]
    assert [stage.seed for stage in both] == [4, 4] and cfg.photos == [str(photos)]
    shared = _config_given_to("vidbooth.engine.subject.train_subject", [
        "train-subject", str(photos), "--name", "S*", "--class-noun", "dog", "--batch-size", "3",
        "--checkpoint-every", "6", "--no-flip", "--gradient-checkpointing"], monkeypatch)
    stages = (shared.textual_inversion.train, shared.identity.train)
    assert [(s.batch_size, s.checkpoint_every, s.gradient_checkpointing) for s in stages] == [
        (3, 6, True), (3, 6, True)] and shared.data.flip is False


def test_the_subject_stage_commands_flags_reach_their_stages_keys(tmp_path, monkeypatch, isolated_home):
    photos = write_photos(tmp_path / "photos")
    stage_one = {"--steps": ("textual_inversion.train.steps", 17), "--lr": ("textual_inversion.train.lr", 0.004),
                 "--batch-size": ("textual_inversion.train.batch_size", 2),
                 "--checkpoint-every": ("textual_inversion.train.checkpoint_every", 8),
                 "--num-vectors": ("textual_inversion.num_vectors", 3),
                 "--gradient-checkpointing": ("textual_inversion.train.gradient_checkpointing", True)}
    cfg = _config_given_to("vidbooth.engine.subject.train_textual_inversion", [
        "textual-inversion", str(photos), "--name", "S*", "--class-noun", "dog", *_argv(stage_one)], monkeypatch)
    _check(cfg, stage_one)
    with staged_artifact("subject", "S*") as stage:
        write_json(stage / MANIFEST, {"name": "S*", "kind": "subject", "schema_version": 1, "files": {}})
    stage_two = {"--steps": ("identity.train.steps", 19), "--lr": ("identity.train.lr", 0.0005),
                 "--batch-size": ("identity.train.batch_size", 1),
                 "--checkpoint-every": ("identity.train.checkpoint_every", 9),
                 "--hidden-ratio": ("identity.hidden_ratio", 0.75), "--resume": ("resume", True),
                 "--gradient-checkpointing": ("identity.train.gradient_checkpointing", True)}
    cfg = _config_given_to("vidbooth.engine.subject.train_identity_adapter", [
        "identity-adapter", "--name", "S*", *_argv(stage_two)], monkeypatch)
    _check(cfg, stage_two)


def test_generate_flags_reach_their_keys(tmp_path, monkeypatch, isolated_home):
    photo = write_photos(tmp_path / "photos", count=1)
    flags = RUNTIME | {
        "--prompt": ("prompt", "a dog"), "--out": ("out", str(tmp_path / "dog.gif")), "--num-videos": ("num_videos", 2),
        "--negative-prompt": ("sampling.negative_prompt", "blurry"), "--num-frames": ("sampling.num_frames", 5),
        "--height": ("sampling.height", 48), "--width": ("sampling.width", 80),
        "--num-inference-steps": ("sampling.num_inference_steps", 3),
        "--guidance-scale": ("sampling.guidance_scale", 4.5),
        "--scheduler": ("sampling.scheduler", "dpm++"), "--fps": ("sampling.fps", 12),
        "--subject-scale": ("subject_scale", 0.5), "--motion-scale": ("motion_scale", 0.25),
        "--motion-field-strength-x": ("sampling.zero_shot.motion_field_strength_x", 3.0),
        "--motion-field-strength-y": ("sampling.zero_shot.motion_field_strength_y", -2.0),
        "--image-prompt": ("image_prompt", str(next(photo.iterdir()))),
        "--image-prompt-model": ("image_prompt_model", str(tmp_path / "ip.safetensors")),
        "--image-prompt-word": ("image_prompt_word", "dog"), "--image-prompt-scale": ("image_prompt_scale", 0.75),
        "--seed": ("runtime.seed", 8),
    }
    cfg = _config_given_to("vidbooth.engine.generate.generate", ["generate", *_argv(flags)], monkeypatch)
    _check(cfg, flags)


def test_train_image_prompt_flags_reach_their_keys(tmp_path, monkeypatch, isolated_home):
    flags = {"--out": ("out", str(tmp_path / "ip.safetensors")), "--coarse-steps": ("coarse.steps", 3),
             "--fine-steps": ("fine.steps", 4), "--word": ("word", "dog"), "--num-clips": ("data.clips", 16),
             "--overwrite": ("overwrite", True), "--device": ("runtime.device", "cpu"),
             "--num-frames": ("data.num_frames", 6), "--resolution": ("data.resolution", 96),
             "--image-encoder": ("encoder", "tiny-clip")}
    cfg = _config_given_to("vidbooth.engine.image_prompt.train_image_prompt",
                           ["train-image-prompt", *_argv(flags), "--seed", "5", "--batch-size", "3",
                            "--checkpoint-every", "7"], monkeypatch)
    _check(cfg, flags)
    assert (cfg.coarse.seed, cfg.fine.seed, cfg.data.seed) == (5, 5, 5)
    assert [(s.batch_size, s.checkpoint_every) for s in (cfg.coarse, cfg.fine)] == [(3, 7), (3, 7)]
    assert (cfg.coarse.gradient_checkpointing, cfg.fine.gradient_checkpointing) == (False, False)
    recomputed = _config_given_to("vidbooth.engine.image_prompt.train_image_prompt",
                                  ["train-image-prompt", "--device", "cpu", "--gradient-checkpointing"], monkeypatch)
    assert (recomputed.coarse.gradient_checkpointing, recomputed.fine.gradient_checkpointing) == (True, True)


def test_every_training_command_has_the_training_flags_of_the_others():
    """train-image-prompt had no --batch-size, --checkpoint-every, --num-frames, --resolution or --image-encoder, which
    train-motion names the same settings by: its out-of-memory line had sent users to --set coarse.batch_size=N."""
    import typer.main

    from vidbooth.cli.app import RECOMPUTING_COMMANDS, app

    commands = typer.main.get_command(app).commands
    flags = {name: {opt for param in commands[name].params for opt in param.opts} for name in RECOMPUTING_COMMANDS}
    shared = {"--batch-size", "--checkpoint-every", "--resolution", "--gradient-checkpointing", "--overwrite",
              "--resume", "--base", "--motion-adapter", "--device", "--precision", "--attention", "--seed", "-r",
              "--set"}
    assert {name: sorted(shared - have) for name, have in flags.items()} == {name: [] for name in flags}
    clips = {name: {opt for param in commands[name].params for opt in (*param.opts, *param.secondary_opts)}
             for name in ("train-motion", "train-image-prompt")}
    for flag in ("--num-frames", "--frames", "--image-encoder"):
        assert all(flag in have for have in clips.values()), flag


def test_a_flag_that_several_commands_share_is_told_alike_by_each():
    """demo's --base had said 'Base model (default: nano).', where the others say what a base may be."""
    import typer.main

    from vidbooth.cli.app import app

    helps: dict[str, set[str]] = {}
    for command in typer.main.get_command(app).commands.values():
        for param in command.params:
            for flag in set(param.opts) & {"--base", "--device", "--attention", "--motion-adapter", "--set",
                                           "--gradient-checkpointing"}:
                helps.setdefault(flag, set()).add(param.help)
    assert {flag: len(told) for flag, told in helps.items() if flag != "--base"} == {
        "--device": 1, "--attention": 1, "--motion-adapter": 1, "--set": 1, "--gradient-checkpointing": 1}
    base = "Base model: diffusers folder, hub id, or built-in name (default: nano)"
    assert [told for told in helps["--base"] if not told.startswith(base)] == []


def test_a_second_subject_to_evaluate_is_refused_rather_than_taken_for_the_first(tmp_path, capsys):
    """generate takes --subject again for each subject; evaluate, which scores against one, had kept the last."""
    video = tmp_path / "out.mp4"
    video.write_bytes(b"never read")
    assert main(["evaluate", str(video), "-s", "A", "--subject", "B"]) == 2
    assert capsys.readouterr().err == (
        "error: --subject is given 2 times (A, B): evaluate scores against one subject's photos; give one --subject, "
        "or --ref-images with a folder of all their photos\n")


def test_pretrain_flags_reach_their_keys(tmp_path, monkeypatch):
    flags = {"--out": ("out", str(tmp_path / "run")), "--max-minutes": ("max_minutes", 2.5),
             "--export": ("export", str(tmp_path / "model")), "--threads": ("threads", 2), "--seed": ("seed", 3),
             "--init-from": ("init_from", "nano")}
    cfg = _config_given_to("vidbooth.nano.pretrain.pretrain", ["pretrain", *_argv(flags)], monkeypatch)
    _check(cfg, flags)


def test_demo_flags_reach_their_keys(tmp_path, monkeypatch):
    flags = {"--out": ("out", str(tmp_path / "d")), "--seed": ("seed", 6), "--fast": ("fast", True),
             "--base": ("base", "tiny"), "--num-videos": ("num_videos", 3), "--device": ("runtime.device", "cpu"),
             "--precision": ("runtime.precision", "bf16"), "--attention": ("runtime.attention", "math")}
    cfg = _config_given_to("vidbooth.engine.demo.run_demo", ["demo", *_argv(flags)], monkeypatch)
    _check(cfg, flags)


def test_evaluate_flags_reach_their_keys(tmp_path, monkeypatch):
    video = tmp_path / "out.mp4"
    video.write_bytes(b"read by the engine")
    flags = {"--prompt": ("prompt", "a dog"), "--ref-images": ("ref_images", str(tmp_path)),
             "--ref-video": ("ref_video", str(video)), "--metrics": ("metrics", ["clip_t"]),
             "--clip-model": ("clip_model", "nano"), "--dino-model": ("dino_model", str(tmp_path / "dino")),
             "--probe": ("probe", True), "--batch-size": ("batch_size", 4),
             "--json": ("json", str(tmp_path / "s.json")),
             "--csv": ("csv", str(tmp_path / "s.csv")), "--device": ("device", "cpu")}
    cfg = _config_given_to("vidbooth.eval.evaluate.evaluate_videos", ["evaluate", str(video), *_argv(flags)],
                           monkeypatch)
    _check(cfg, flags)
    assert cfg.videos == [str(video)]
    cfg = _config_given_to("vidbooth.eval.evaluate.evaluate_videos", ["evaluate", str(video), "-s", "S*"], monkeypatch)
    assert cfg.subject == "S*"
    for argv, probe in (([], None), (["--no-probe"], False)):  # None: auto, the probe with nano's auto metrics
        cfg = _config_given_to("vidbooth.eval.evaluate.evaluate_videos", ["evaluate", str(video), *argv], monkeypatch)
        assert cfg.probe is probe


def test_the_commands_with_gradient_checkpointing_are_those_the_memory_message_suggests_it_for():
    """A training command given the flag, or a command without it named in the out-of-memory hint, had drifted."""
    import typer.main

    from vidbooth.cli.app import RECOMPUTING_COMMANDS, app, out_of_memory_message

    group = typer.main.get_command(app)
    with_flag = {name for name, command in group.commands.items()
                 if any("--gradient-checkpointing" in param.opts for param in command.params)}
    assert with_flag == RECOMPUTING_COMMANDS
    for name in group.commands:
        message = out_of_memory_message(MemoryError(), name)
        assert ("or --gradient-checkpointing, and run it again" in message) == (name in with_flag), name


def test_every_command_is_either_a_training_shared_by_processes_or_one_of_a_single_process():
    """A command in neither list would be run again by each process of a launch, or refuse before meeting the others
    without telling them."""
    import typer.main

    from vidbooth.cli.app import ONE_PROCESS_COMMANDS, TRAINING_COMMANDS, app

    commands = typer.main.get_command(app).commands
    assert sorted(commands) == sorted(ONE_PROCESS_COMMANDS + TRAINING_COMMANDS)
    assert not set(ONE_PROCESS_COMMANDS) & set(TRAINING_COMMANDS)
    assert all("--device" in {opt for param in commands[name].params for opt in param.opts}
               for name in TRAINING_COMMANDS)  # the device the refusing process meets the others on


def test_completing_a_library_name_offers_nothing_where_the_library_is_a_file(tmp_path, isolated_home):
    from vidbooth.cli.app import app
    from vidbooth.cli.options import learned_names

    (tmp_path / "library").write_text("")
    command = typer.main.get_command(app)  # typer's own copy of click (typer 0.20 on), which installs no click
    root = command.context_class(command, info_name="vidbooth")
    root.params["home"] = str(tmp_path / "library")
    assert learned_names("subject")(root, "") == []


@pytest.mark.parametrize("revision", ["null", "main"])
def test_a_subject_learned_on_the_shipped_base_leaves_the_base_to_the_default_without_a_word(revision, isolated_home,
                                                                                            capsys, monkeypatch):
    """A revision recorded with it (trained with --set backbone.revision= on nano, where it had no effect) is not
    carried over either: each generate with the subject had warned to 'leave it out', which no flag could."""
    from vidbooth.cli.options import learned_backbone

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    with staged_artifact("subject", "S*") as stage:
        (stage / "config.yaml").write_text(f"backbone:\n  base: nano\n  revision: {revision}\n")
        write_json(stage / MANIFEST, {"name": "S*", "kind": "subject", "schema_version": 1, "files": {},
                                      "paths": {"config": "config.yaml"}})
    assert learned_backbone(None, None, {}, [("subject", "S*")]) == {}
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("config_yaml", [None, "garbage: [\n", "textual_inversion: {num_vectors: 1}\n"])
def test_the_base_a_subject_was_learned_on_is_read_from_its_manifest_whatever_its_config_yaml(isolated_home,
                                                                                           config_yaml):
    """config.yaml is a copy for rerunning that its user may edit or delete: deleted or edited, generate and
    identity-adapter had loaded nano and refused the subject; not YAML, they had ended in a traceback."""
    from vidbooth.cli.options import learned_backbone

    with staged_artifact("subject", "S*") as stage:
        if config_yaml is not None:
            (stage / "config.yaml").write_text(config_yaml)
        write_json(stage / MANIFEST, {"name": "S*", "kind": "subject", "schema_version": 1, "files": {},
                                      "paths": {"config": "config.yaml"},
                                      "config": {"backbone": {"base": "tiny", "revision": None}}})
    assert learned_backbone(None, None, {}, [("subject", "S*")]) == {"backbone.base": "tiny"}
    manifest = isolated_home / "subjects" / "S%2A" / MANIFEST
    write_json(manifest, {"name": "S*", "kind": "subject", "schema_version": 1, "files": {},
                          "paths": {"config": "config.yaml"}})  # no record: config.yaml, as it is, or nothing
    assert learned_backbone(None, None, {}, [("subject", "S*")]) == {}


def test_quiet_before_the_command_is_vidbooth_quiet_for_that_command_only(tmp_path, monkeypatch, capsys):
    """VIDBOOTH_DEBUG had its flag (--debug) and VIDBOOTH_QUIET none."""
    import os

    from vidbooth.reporting import info

    monkeypatch.setenv("VIDBOOTH_QUIET", "0")
    monkeypatch.setattr("vidbooth.engine.demo.run_demo", lambda cfg: info("an information line"))
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    assert "an information line" in capsys.readouterr().err
    assert main(["--quiet", "demo", "--out", str(tmp_path / "d")]) == 0
    assert capsys.readouterr().err == "" and os.environ["VIDBOOTH_QUIET"] == "0"  # put back for the next command
    assert main(["demo", "--quiet"]) == 2
    assert "(--quiet goes before the command: vidbooth --quiet demo ...)" in capsys.readouterr().err


def test_a_script_may_run_a_command_in_a_thread_of_its_own(isolated_home):
    import threading

    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["list"])))
    worker.start()
    worker.join(timeout=60)
    assert codes == [0]


DOCS = Path(__file__).resolve().parents[1] / "docs"
DOC_TABLES = {  # command -> its docs page and which of the page's `| flag |` tables (0: all of them)
    "train-subject": ("subject.md", 0), "textual-inversion": ("subject.md", 0), "identity-adapter": ("subject.md", 0),
    "train-motion": ("motion.md", 0), "motion-adapter": ("motion.md", 0), "generate": ("generate.md", 0),
    "evaluate": ("evaluate.md", 0), "list": ("list.md", 0), "demo": ("demo.md", 0),
    "train-image-prompt": ("image-prompt.md", 2), "pretrain": ("pretrain.md", 0),
}


def documented_flags(text: str, table: int = 0) -> set[str]:
    """The flags named in the first column of the `| flag | ...` tables of a docs page (`table`: the n-th only)."""
    import re

    tables, rows = [], None
    for line in text.splitlines():
        if line.startswith("| flag |"):
            rows = []
            tables.append(rows)
        elif rows is not None and line.startswith("|"):
            rows.append(line)
        else:
            rows = None
    chosen = [tables[table - 1]] if table else tables
    first_columns = [row.split("|")[1] for rows in chosen for row in rows]
    return {flag for column in first_columns for quoted in re.findall(r"`([^`]*)`", column)
            for flag in re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", quoted)}


def test_every_flag_of_a_command_is_in_its_docs_table_and_every_flag_there_is_a_commands():
    """A flag added to a command but not to its page (`--no-gradient-checkpointing` had been left out of three), or
    one renamed or removed that its page still lists, had been seen only by reading both."""
    import typer.main

    from vidbooth.cli.app import app

    commands = typer.main.get_command(app).commands
    assert sorted(commands) == sorted(DOC_TABLES)
    helped = {name: {opt for param in command.params if param.param_type_name == "option"
                     for opt in (*param.opts, *param.secondary_opts)} - {"-h", "--help"}
              for name, command in commands.items()}
    documented = {name: documented_flags((DOCS / page).read_text(encoding="utf-8"), table)
                  for name, (page, table) in DOC_TABLES.items()}
    assert {name: sorted(helped[name] - documented[name]) for name in commands} == {name: [] for name in commands}
    for page in {page for page, _ in DOC_TABLES.values()}:
        names = [name for name, (its_page, _) in DOC_TABLES.items() if its_page == page]
        flags = set().union(*(documented[name] for name in names))
        assert sorted(flags - set().union(*(helped[name] for name in names))) == [], page


def _subject_learned_on(base: str, name: str = "S*") -> None:
    with staged_artifact("subject", name) as stage:
        write_json(stage / MANIFEST, {"name": name, "kind": "subject", "schema_version": 1, "files": {},
                                      "paths": {"config": "config.yaml"}, "config": {"backbone": {"base": base}}})


def test_a_recipe_naming_the_learned_folder_another_way_is_not_warned_of(isolated_home, tmp_path, capsys,
                                                                          monkeypatch):
    """The subject's base is recorded resolved; a recipe's '../models/sd15' or a link to the folder is the same
    one: only `Path.absolute()`, which keeps '..' and links, had warned that it was another base."""
    from vidbooth.cli.options import warn_of_a_recipe_base

    folder = tmp_path / "models" / "sd15"
    folder.mkdir(parents=True)
    (tmp_path / "link").symlink_to(folder)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    _subject_learned_on(str(folder.resolve()))
    for named_so in ("../models/sd15", "../models/../models/sd15", str(tmp_path / "link")):
        Path("r.yaml").write_text(f"backbone:\n  base: {named_so}\n")
        warn_of_a_recipe_base(named_so, "r.yaml", None, {}, [("subject", "S*")])
        assert capsys.readouterr().err == "", named_so
    Path("r.yaml").write_text("backbone:\n  base: ../models\n")
    warn_of_a_recipe_base("../models", "r.yaml", None, {}, [("subject", "S*")])
    assert f"sets the base ../models, not {folder.resolve()}" in capsys.readouterr().err


def test_a_recipe_that_sets_no_base_is_not_said_to_set_one(isolated_home, tmp_path, capsys):
    """Its base is the default (nano): "recipe r.yaml sets the base nano" had named a setting the recipe lacks."""
    from vidbooth.cli.options import warn_of_a_recipe_base

    _subject_learned_on(str(tmp_path))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sampling:\n  num_frames: 8\n")
    warn_of_a_recipe_base("nano", str(recipe), None, {}, [("subject", "S*")])
    err = capsys.readouterr().err
    assert f"recipe {recipe} sets no base (so the default, nano), not {tmp_path}, on which subject S* was" in err
    assert err.count("\n") == 1 and f"add --base {tmp_path} to use that one" in err
    recipe.write_text("backbone:\n  base: nano\n")
    warn_of_a_recipe_base("nano", str(recipe), None, {}, [("subject", "S*")])
    assert f"recipe {recipe} sets the base nano, not {tmp_path}" in capsys.readouterr().err


def test_a_recipe_base_is_warned_of_only_with_a_recipe_no_base_given_and_one_base_recorded(isolated_home, tmp_path,
                                                                                          capsys):
    """No recipe (the learned base is taken), a --base or `--set backbone.base=` given, subjects that disagree or
    one that cannot be read (the load refuses them on its own): nothing to warn of."""
    from vidbooth.cli.options import warn_of_a_recipe_base

    recipe = tmp_path / "r.yaml"
    recipe.write_text("backbone:\n  base: tiny\n")
    _subject_learned_on(str(tmp_path))
    _subject_learned_on("nano", "T*")
    one = [("subject", "S*")]
    for args in ((None, None, {}, one), (str(recipe), None, {"backbone.base": "tiny"}, one),
                 (str(recipe), ["backbone.base=tiny"], {}, one), (str(recipe), None, {}, [*one, ("subject", "T*")]),
                 (str(recipe), None, {}, [("subject", "nobody")])):
        warn_of_a_recipe_base("tiny", *args)
        assert capsys.readouterr().err == "", args
    warn_of_a_recipe_base("tiny", str(recipe), None, {}, one)
    assert f"recipe {recipe} sets the base tiny, not {tmp_path}" in capsys.readouterr().err
