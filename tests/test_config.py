import pytest

from vidbooth.config import GenerateConfig, load_config, to_yaml
from vidbooth.config.motion import MotionConfig
from vidbooth.config.pretrain import PretrainConfig
from vidbooth.config.subject import SubjectConfig
from vidbooth.errors import UserError


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sampling:\n  guidance_scale: 5.0\n  num_frames: 12\n  scheduler: dpm++\n")
    return str(path)


def test_precedence_defaults_recipe_set_flags(recipe):
    assert load_config(GenerateConfig).sampling.guidance_scale == 9.0
    cfg = load_config(GenerateConfig, recipe)
    assert (cfg.sampling.guidance_scale, cfg.sampling.num_frames) == (5.0, 12)
    cfg = load_config(GenerateConfig, recipe, ["sampling.num_frames=16", "sampling.guidance_scale=6"])
    assert (cfg.sampling.guidance_scale, cfg.sampling.num_frames, cfg.sampling.scheduler) == (6.0, 16, "dpm++")
    cfg = load_config(GenerateConfig, recipe, ["sampling.num_frames=16"], {"sampling.num_frames": 4, "sampling.height": None})
    assert cfg.sampling.num_frames == 4 and cfg.sampling.height is None
    assert load_config(GenerateConfig, sets=["sampling.num_frames=4", "sampling.num_frames=6"]).sampling.num_frames == 6


def test_the_last_set_of_a_key_is_the_one_named():
    from vidbooth.config.load import given_by

    assert given_by("data.fps", None, ["data.fps=4", "data.fps=6"], {}) == ("set", "--set data.fps=6")


def test_named_recipes_resolve():
    cfg = load_config(GenerateConfig, "zeroscope/generate")
    assert cfg.backbone.base == "cerspense/zeroscope_v2_576w" and (cfg.sampling.width, cfg.sampling.height) == (576, 320)
    zero = load_config(GenerateConfig, "text2video-zero/generate")
    assert zero.backbone.motion_adapter is None and zero.sampling.num_inference_steps == 50
    assert (zero.sampling.zero_shot.t0, zero.sampling.zero_shot.t1) == (0.88, 0.94)  # diffusers' 44 and 47 of 50


@pytest.mark.parametrize(
    "sets, message",
    [
        (["sampling.bogus=1"],
         r"^--set sampling.bogus=1: config key 'sampling.bogus' is not a setting: docs/generate.md in the vidbooth "
         "repository lists the settings$"),
        (["sampling.num_frame=3"], r"^--set sampling.num_frame=3: config key 'sampling.num_frame' is not a setting "
                                   r"\(did you mean 'sampling.num_frames'\?\)"),
        (["sampling.num_frames=many"],
         "^--set sampling.num_frames=many: config key 'sampling.num_frames' takes a whole number, got 'many'$"),
        (["sampling.guidance_scale=high"], "config key 'sampling.guidance_scale' takes a number, got 'high'$"),
        (["runtime.seed=null"],  # OmegaConf's own words: "Incompatible value 'None' for field of type 'int'"
         "^--set runtime.seed=null: config key 'runtime.seed' takes a whole number, got null \\(none\\): give a value$"),
        (["sampling.guidance_scale=null"], "config key 'sampling.guidance_scale' takes a number, got null"),
        (["nokey"], "--set expects key=value"),
        (["=3"], "--set expects key=value"),
        (["sampling.guidance_scale=[1"], r"--set sampling.guidance_scale=\[1 cannot be read .*as in YAML"),
    ],
)
def test_bad_keys_and_types_name_the_key(sets, message):
    with pytest.raises(UserError, match=message):
        load_config(GenerateConfig, None, sets)


@pytest.mark.parametrize("item, message", [
    ("arch.vae.block_out_channels=5", "config key 'arch.vae.block_out_channels' takes a list, written [a, b] "
                                      "(one item: [a]), got '5'"),
    ("unet.path_phases=5", "config key 'unet.path_phases' takes a list, written [a, b] (one item: [a]), got '5'"),
    ("unet.path_phases=[5]", "config key 'unet.path_phases[0]' takes settings, written {key: value, ...}, got '5'"),
])
def test_a_single_value_for_a_list_or_settings_says_how_to_write_them(item, message):
    """OmegaConf's own words had been 'AnyNode is not a ListConfig, TupleConfig, list, or tuple' and 'int is not a
    subclass of PathPhase'."""
    from vidbooth.config.pretrain import PretrainConfig

    with pytest.raises(UserError) as caught:
        load_config(PretrainConfig, None, [item])
    assert str(caught.value) == f"--set {item}: {message}"


def test_a_switch_given_another_word_says_it_takes_true_or_false():
    from vidbooth.config.motion import MotionConfig

    with pytest.raises(UserError, match=r"^--set preview.enabled=maybe: config key 'preview.enabled' takes true or "
                                        r"false, got 'maybe'$"):
        load_config(MotionConfig, None, ["preview.enabled=maybe"])


def test_set_keeps_text_settings_as_typed_and_reads_other_values_as_yaml():
    """A name, prompt or path given with --set is taken as typed: YAML would turn `007` into 7, `off` into False
    and `*.mp4` into a parse error. Numbers, booleans, lists and `null` are still read as YAML."""
    from vidbooth.config.evaluate import EvaluateConfig
    from vidbooth.config.subject import SubjectConfig

    sets = ["name=007", "photos=dog/", "class_noun=1:30", "backbone.revision=null", "data.flip=false",
            "textual_inversion.train.lr=1e-3"]
    cfg = load_config(SubjectConfig, None, sets)
    assert (cfg.name, cfg.photos, cfg.class_noun, cfg.backbone.revision) == ("007", ["dog/"], "1:30", None)
    assert cfg.data.flip is False and cfg.textual_inversion.train.lr == 1e-3
    cfg = load_config(EvaluateConfig, None, ["videos=*.mp4", "prompt=off", "metrics=[clip_t, t_cons]"])
    assert (cfg.videos, cfg.prompt, cfg.metrics) == (["*.mp4"], "off", ["clip_t", "t_cons"])
    cfg = load_config(GenerateConfig, None, ["prompt=a dog: running, fast"])
    assert cfg.prompt == "a dog: running, fast"
    # `null` is none only where a setting may be none: a prompt, which may not, was refused (even beside -p)
    cfg = load_config(GenerateConfig, None, ["prompt=null", "sampling.negative_prompt=~", "image_prompt=null"])
    assert (cfg.prompt, cfg.sampling.negative_prompt, cfg.image_prompt) == ("null", "~", None)
    assert load_config(GenerateConfig, None, ["prompt=null"], {"prompt": "a dog"}).prompt == "a dog"


@pytest.mark.parametrize("recipe, sets, message", [
    ("sampling: 5\n", [], r"recipe .*r.yaml: config key 'sampling' is a section of settings, given a value: give the "
                          r"settings under it \(such as sampling\.\w+\)"),
    ("sampling:\n", [], "config key 'sampling' is a section of settings, given nothing"),
    (None, ["sampling.zero_shot=3"], r"--set sampling.zero_shot=3: config key 'sampling.zero_shot' is a section"),
])
def test_a_value_where_a_section_belongs_is_named(recipe, sets, message, tmp_path):
    """OmegaConf said 'Merge error: int is not a subclass of SamplingConfig', naming neither key nor file."""
    if recipe:
        (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(UserError, match=message):
        load_config(GenerateConfig, str(tmp_path / "r.yaml") if recipe else None, sets)


@pytest.mark.parametrize("schema, recipe, sets, message", [
    (GenerateConfig, None, ["subjects.0=x"], r"--set subjects.0=x: config key 'subjects' is a list, given a mapping "
                                             r"\(or one item set by its number\): give the whole list, such as "
                                             r"--set 'subjects=\[a, b\]'$"),
    (GenerateConfig, None, ["subjects[0]=x"], "config key 'subjects' is a list, given a mapping"),
    (GenerateConfig, None, ["subjects=[[a]]"], "config key 'subjects' is a list, given a list inside it"),
    (MotionConfig, None, ["captions=[a, {b: 1}]"], "config key 'captions' is a list, given a list inside it"),
    (GenerateConfig, "subjects: {a: 1}\n", [], r"recipe .*r.yaml: config key 'subjects' is a list, given a mapping .*"
                                                r"such as subjects: \[a, b\]$"),
    (PretrainConfig, None, ["unet.path_phases.0.steps=10"], "config key 'unet.path_phases' is a list, given a mapping"),
])
def test_a_list_setting_given_a_mapping_or_nested_lists_is_named(schema, recipe, sets, message, tmp_path):
    """`--set subjects.0=x` failed with a TypeError traceback from OmegaConf's merge, `subjects=[[a]]` later in
    the command (a list where a name belongs): both are one line naming the key and how to give a list."""
    if recipe:
        (tmp_path / "r.yaml").write_text(recipe)
    with pytest.raises(UserError, match=message):
        load_config(schema, str(tmp_path / "r.yaml") if recipe else None, sets)
    key = message.split("'")[1]
    assert load_config(schema, None, [f"{key}=[]"]) is not None  # the whole list is taken


@pytest.mark.parametrize("text, message", [
    ("sampling:\n  num_frames: 8\n  num_frames: 9\n", "found duplicate key num_frames at line 3, column 3$"),
    ("sampling: [unclosed\nprompt: a\n", "did not find expected ',' or ']' at line 2, column 7$"),
    ("sampling:\n\tnum_frames: 8\n", r"cannot start any token \(a tab: indent with spaces\) at line 2, column 1$"),
])
def test_a_recipe_that_is_not_yaml_says_what_is_wrong_and_where(text, message, tmp_path):
    """Only the YAML error's first line was shown: 'while constructing a mapping', without the key or the line."""
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(UserError, match=r"recipe .*r.yaml is not valid YAML: .*" + message):
        load_config(GenerateConfig, str(tmp_path / "r.yaml"))


def test_a_recipe_that_is_not_utf8_says_so(tmp_path):
    """Saved in Latin-1 ('café'): it had been 'not valid YAML: 'utf-8' codec can't decode byte 0xe9 ...'."""
    (tmp_path / "r.yaml").write_bytes("prompt: café\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"^recipe .*r.yaml is not UTF-8 text \(byte 0xe9 at offset 11\): save it as "
                                        "UTF-8$"):
        load_config(GenerateConfig, str(tmp_path / "r.yaml"))


@pytest.mark.parametrize("schema, command", [("vidbooth.config.subject:SubjectConfig", "subject"),
                                             ("vidbooth.config.motion:MotionConfig", "motion"),
                                             ("vidbooth.config.pretrain:PretrainConfig", "pretrain"),
                                             ("vidbooth.config.image_prompt:ImagePromptConfig", "image-prompt"),
                                             ("vidbooth.config.schema:GenerateConfig", "generate")])
def test_an_unknown_recipe_lists_its_commands_own(schema, command):
    import importlib

    module, name = schema.split(":")
    with pytest.raises(UserError, match=rf"or one of: (\S+/{command}(, |$))+$"):
        load_config(getattr(importlib.import_module(module), name), "nope")


def test_bad_recipe(tmp_path):
    from vidbooth.config.evaluate import EvaluateConfig
    from vidbooth.config.motion import MotionConfig

    with pytest.raises(UserError, match="^recipe 'nope' not found: give a YAML file or one of: animatediff/generate, "
                                        "modelscope/generate, nano/generate, .*zeroscope/generate$") as caught:
        load_config(GenerateConfig, "nope")
    assert "motion" not in str(caught.value)  # the command's recipes only (it had listed all 18)
    with pytest.raises(UserError, match="or one of: animatediff/motion, .*zeroscope/motion$"):
        load_config(MotionConfig, "zeroscope")  # a model's name alone
    with pytest.raises(UserError, match=r"^recipe 'nope' not found: give a YAML file \(this command ships none\)$"):
        load_config(EvaluateConfig, "nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(GenerateConfig, str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("sampling:\n  guidance: 3\n")
    with pytest.raises(UserError, match="config key 'sampling.guidance'"):
        load_config(GenerateConfig, str(typo))


def test_env_attention_only_when_config_says_auto(monkeypatch, recipe):
    monkeypatch.setenv("VIDBOOTH_ATTENTION", "math")
    assert load_config(GenerateConfig).runtime.attention == "math"
    assert load_config(GenerateConfig, None, ["runtime.attention=sdpa"]).runtime.attention == "sdpa"
    # names are taken in any case ('AUTO' had kept the variable out)
    assert load_config(GenerateConfig, None, ["runtime.attention=AUTO"]).runtime.attention == "math"


def test_resolved_config_round_trips(recipe, tmp_path):
    cfg = load_config(GenerateConfig, recipe, ["prompt=a dog"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(GenerateConfig, str(path)) == cfg


@pytest.mark.parametrize(
    "recipe, command, sets, base, expected",
    [
        (None, "generate", [], None, "nano/generate"),  # the default base is nano
        (None, "motion", [], "nano", "nano/motion"),
        (None, "subject", ["backbone.base=nano"], None, "nano/subject"),
        (None, "generate", [], "tiny", None),  # other bases keep the generic defaults
        (None, "generate", ["backbone.base=tiny"], None, None),
        (None, "generate", ["backbone.base=tiny"], "nano", "nano/generate"),  # the flag beats --set
        (None, "generate", ["backbone.base=tiny", "backbone.base=nano"], None, "nano/generate"),  # last --set wins
        (None, "generate", ['backbone.base="nano"'], None, "nano/generate"),  # values parse as load_config's do
        (None, "evaluate", [], None, None),  # nano has no recipe for this command
        ("zeroscope/generate", "generate", [], None, "zeroscope/generate"),  # a given recipe always wins
    ],
)
def test_nano_recipes_apply_when_no_recipe_is_given(recipe, command, sets, base, expected):
    from vidbooth.config.load import recipe_or_default

    assert recipe_or_default(recipe, command, sets, {"backbone.base": base}) == expected


def test_nano_recipes_keep_fp32_on_every_device_unless_a_flag_says_otherwise():
    """Half precision saves nano nothing and changes its videos on a GPU (docs/precision.md): its recipes say fp32
    and no mixed precision, which --precision and --set still override; the demo's auto leaves them."""
    from vidbooth.config.demo import DemoConfig
    from vidbooth.config.motion import MotionConfig
    from vidbooth.config.subject import SubjectConfig
    from vidbooth.engine.demo import _runtime

    subject, motion = load_config(SubjectConfig, "nano/subject"), load_config(MotionConfig, "nano/motion")
    generate = load_config(GenerateConfig, "nano/generate")
    assert {subject.runtime.precision, motion.runtime.precision, generate.runtime.precision} == {"fp32"}
    trains = [subject.textual_inversion.train, subject.identity.train, motion.train]
    assert [train.mixed_precision for train in trains] == ["no", "no", "no"]
    assert load_config(GenerateConfig, "nano/generate", None, {"runtime.precision": "fp16"}).runtime.precision == "fp16"
    assert load_config(MotionConfig, "nano/motion", ["train.mixed_precision=bf16"]).train.mixed_precision == "bf16"
    demo = DemoConfig()
    assert load_config(GenerateConfig, "nano/generate", None, _runtime(demo)).runtime.precision == "fp32"
    demo.runtime.precision = "bf16"
    assert load_config(GenerateConfig, "nano/generate", None, _runtime(demo)).runtime.precision == "bf16"


def test_a_plain_string_where_a_list_is_expected_is_a_one_item_list(tmp_path):
    """`photos: ./dog` in a recipe (what saved subject configs held before photos became a list), `--set
    clips=a.mp4`, and a string from Python all mean that one path; lists pass as they are."""
    from vidbooth.config.motion import MotionConfig
    from vidbooth.config.subject import SubjectConfig

    recipe = tmp_path / "old.yaml"
    recipe.write_text("photos: /data/dog\nname: S*\ndata:\n  captions: 'a photo of {}'\n")
    loaded = load_config(SubjectConfig, str(recipe))
    assert loaded.photos == ["/data/dog"] and loaded.data.captions == ["a photo of {}"]
    assert load_config(SubjectConfig, str(recipe), ["photos=[a.png,b.png]"]).photos == ["a.png", "b.png"]
    assert load_config(MotionConfig, None, ["clips=a.mp4"]).clips == ["a.mp4"]
    assert SubjectConfig(photos=tmp_path).photos == [str(tmp_path)]
    assert load_config(SubjectConfig, None, None, {"photos": "/data/dog", "name": "S*"}).photos == ["/data/dog"]


def test_a_recipe_for_another_command_or_not_a_mapping_is_one_clear_error(tmp_path):
    from vidbooth.config.subject import SubjectConfig

    with pytest.raises(UserError, match=r"recipe .*subject.yaml: config key 'data'.*is it a recipe for another command"):
        load_config(GenerateConfig, "nano/subject")
    typo = tmp_path / "typo.yaml"
    typo.write_text("data:\n  flipp: true\n")
    with pytest.raises(UserError, match=r"config key 'data.flipp'") as caught:
        load_config(SubjectConfig, str(typo))
    assert "another command" not in str(caught.value)  # a known section with a wrong key is a typo
    typo.write_text("textual_inversion:\n  train:\n    lr: abc\n")  # the file that holds a bad value is named
    with pytest.raises(UserError, match=r"recipe .*typo.yaml: config key 'textual_inversion.train.lr' takes a number, "
                       r"got 'abc'$"):
        load_config(SubjectConfig, str(typo))
    typo.write_text("dataa:\n  flip: true\n")
    with pytest.raises(UserError, match=r"config key 'dataa' is not a setting \(did you mean 'data'\?\): "
                       r"docs/subject.md in the vidbooth repository lists the settings$"):  # not "another command"
        load_config(SubjectConfig, str(typo))
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a mapping of settings"):
        load_config(GenerateConfig, str(listed))


def test_each_train_config_knows_its_key_and_the_commands_flags_for_the_engines_messages():
    from vidbooth.config.motion import MotionConfig
    from vidbooth.config.subject import SubjectConfig

    flags = {"textual_inversion.train.steps": "--ti-steps", "identity.train.steps": "--identity-steps",
             "data.resolution": "--resolution"}
    subject = load_config(SubjectConfig, None, None, None, flags=flags)
    assert subject.textual_inversion.train.setting_name("steps") == "textual_inversion.train.steps (--ti-steps)"
    assert subject.identity.train.setting_name("steps") == "identity.train.steps (--identity-steps)"
    assert subject.identity.train.setting_name("lr") == "identity.train.lr"  # no flag sets it in this command
    assert subject.identity.train.setting_name("data.resolution") == "data.resolution (--resolution)"
    motion = load_config(MotionConfig, None, None, None, flags={"train.lr": "--lr"})
    assert motion.train.setting_name("lr") == "train.lr (--lr)"
    assert "_key" not in to_yaml(motion) and "_flags" not in to_yaml(motion)  # not settings


@pytest.mark.parametrize("caption, accepted", [
    ("a photo of {}", True), ("{} in {{braces}}", True),
    ("a {} and {}", False), ("a {x} {}", False), ("a { {}", False), ("a {0}", False), ("a {!r}", False),
    ("a {{}}", False),  # literal braces: no place for the subject
])
def test_captions_must_give_the_subject_one_plain_place(caption, accepted):
    """`{} and {}`, `{x}` and a lone `{` passed the check (each held '{}') and failed in str.format, a traceback."""
    from vidbooth.config.subject import SubjectConfig

    sets = ["name=S*", "class_noun=dog", "photos=dog/", f"data.captions=[{caption!r}]"]
    if accepted:
        assert load_config(SubjectConfig, None, sets).data.captions == [caption]
    else:
        with pytest.raises(UserError, match=r"data.captions must each contain '\{\}' once"):
            load_config(SubjectConfig, None, sets)


def test_empty_values_a_folder_for_a_recipe_and_a_tilde_are_read_as_meant(tmp_path, monkeypatch):
    """`--set key=` read as null ("Incompatible value 'None'"), an empty base as the current folder, a folder as
    recipe as a recipe name not found, and `--recipe=~/r.yaml` (no shell expansion there) as a name."""
    with pytest.raises(UserError, match=r"^--set sampling.num_inference_steps= gives no value: write one after '='"):
        load_config(GenerateConfig, None, ["sampling.num_inference_steps="])
    with pytest.raises(UserError, match=r"^--set backbone.base= is empty: give a model folder, a hub id, or nano"):
        load_config(GenerateConfig, None, ["backbone.base="])  # the --set's: no --base was typed
    assert load_config(GenerateConfig, None, ["prompt="]).prompt == ""  # a text may be empty (generate says so)
    with pytest.raises(UserError, match=f"^recipe {tmp_path} is a folder: give a YAML file in it"):
        load_config(GenerateConfig, str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "r.yaml").write_text("sampling:\n  num_frames: 3\n")
    assert load_config(GenerateConfig, "~/r.yaml").sampling.num_frames == 3


def test_a_recipes_texts_are_taken_as_written_as_set_takes_them(tmp_path):
    """YAML reads an unquoted 007 as 7 and no as false: a recipe made a motion named '7' with the class noun
    'False'. Numbers and true/false where numbers and switches belong, and null, keep their meaning."""
    from vidbooth.config.motion import MotionConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: 007\nclass_noun: no\ncaptions: [yes, 1.50, a]\ndata: {num_frames: 12, fps: 4.0}\n"
                      "backbone: {revision: null}\ntrain: {steps: 12}\n")
    cfg = load_config(MotionConfig, str(recipe))
    assert (cfg.name, cfg.class_noun, cfg.captions) == ("007", "no", ["yes", "1.50", "a"])
    assert (cfg.data.num_frames, cfg.data.fps, cfg.backbone.revision, cfg.train.steps) == (12, 4.0, None, 12)


def test_a_recipe_interpolation_that_finds_nothing_says_how_to_write_the_text(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prompt: a sign reading ${price}\n")
    with pytest.raises(UserError, match=r"Interpolation key 'price' not found \(a recipe's \$\{\.\.\.\} refers to "
                                        r"another setting: write \\\$\{ for the text \$\{\)"):
        load_config(GenerateConfig, str(recipe))
    recipe.write_text("prompt: a sign reading \\${price}\n")
    assert load_config(GenerateConfig, str(recipe)).prompt == "a sign reading ${price}"


def test_what_training_may_make_an_adapter_file_may_hold_and_no_more():
    """The adapters' own limits on a file's metadata (they cannot import config) match the recipes' checks: every
    adapter training makes loads, and nothing wider."""
    from vidbooth.adapters import base, motion
    from vidbooth.config import motion as motion_config
    from vidbooth.config.subject import SubjectConfig

    assert motion.SUBLAYERS == motion_config.SUBLAYERS
    for ratio in (base.MAX_HIDDEN_RATIO, base.MAX_HIDDEN_RATIO + 0.01):
        accepted = ratio <= base.MAX_HIDDEN_RATIO
        for schema, key in ((MotionConfig, "adapter.hidden_ratio"), (SubjectConfig, "identity.hidden_ratio")):
            try:
                load_config(schema, None, [f"{key}={ratio}"])
                made = True
            except UserError:
                made = False
            assert made == accepted, (schema, ratio)


def test_a_recipe_name_may_end_in_yaml(tmp_path, monkeypatch):
    """`--recipe nano/generate.yaml` names the shipped recipe as `nano/generate` does (not nano/generate.yaml.yaml)."""
    from vidbooth import RECIPES_DIR
    from vidbooth.config.load import find_recipe

    monkeypatch.chdir(tmp_path)  # no nano/ folder here: the name is looked up among the shipped recipes
    assert find_recipe("nano/generate.yaml") == RECIPES_DIR / "nano" / "generate.yaml"
    assert find_recipe("nano/generate") == RECIPES_DIR / "nano" / "generate.yaml"


def test_a_section_given_whole_by_set_names_only_the_keys_it_gives():
    from vidbooth.config.load import given_by

    assert given_by("data.fps", None, ["data={stride: 2}"], {}) is None
    assert given_by("data.stride", None, ["data={stride: 2}"], {}) == ("set", "--set data={stride: 2}")


def test_a_quoted_text_given_with_set_is_taken_without_its_quotes():
    from vidbooth.config.subject import SubjectConfig

    cfg = load_config(SubjectConfig, None, ["name='007'", 'class_noun="no"'])
    assert (cfg.name, cfg.class_noun) == ("007", "no")


def test_scheduler_names_are_taken_in_any_case():
    from vidbooth.config.checks import scheduler_key

    assert scheduler_key("DDIM") == "ddim"
    assert scheduler_key("DPM++") == "dpm++"
    assert scheduler_key("DPMSolver++") == "dpm++"
    load_config(GenerateConfig, None, ["sampling.scheduler=DPMSolver++"])  # the config accepts them too


def test_limits_are_inclusive():
    """Each value exactly at its limit is accepted: the largest batch of videos, frame rate, frame count and seed,
    and an appearance embedding dropped in every step."""
    from vidbooth.config.checks import MAX_FRAMES, MAX_SEED, MAX_VIDEOS
    from vidbooth.config.schema import MAX_FPS

    assert (MAX_VIDEOS, MAX_FPS, MAX_FRAMES, MAX_SEED) == (256, 1000, 1024, 4294967295)
    sets = ["num_videos=256", "sampling.fps=1000", "sampling.num_frames=1024", "runtime.seed=4294967295"]
    cfg = load_config(GenerateConfig, None, sets)
    assert (cfg.num_videos, cfg.sampling.fps, cfg.sampling.num_frames, cfg.runtime.seed) == (256, 1000, 1024, MAX_SEED)
    assert load_config(MotionConfig, None, ["appearance.p_image_zero=1"]).appearance.p_image_zero == 1.0


@pytest.mark.parametrize("schema, sets, message", [
    (GenerateConfig, ["backbone.base=   "], r"^--set backbone.base= is empty: give a model folder"),
    (GenerateConfig, ["sampling.zero_shot.t0=0.9", "sampling.zero_shot.t1=0.9"],
     r"^sampling.zero_shot.t0 and t1 must be in \(0, 1\) with t0 below t1 \(1 is pure noise\), got t0 0.9 and t1 0.9$"),
    (GenerateConfig, ["num_videos=257"], r"^num_videos \(--num-videos\) must be at most 256, got 257$"),
    ("subject", ["data.captions=[]"], r"^data.captions must each contain '\{\}' once .*, got none$"),
    ("subject", ["textual_inversion.guidance_scale=inf"],
     r"^textual_inversion.guidance_scale must be 0 \(off\) or positive, got inf$"),
    ("subject", ["identity.guidance_scale=inf"], r"^identity.guidance_scale must be 0 \(off\) or positive, got inf$"),
    ("subject", ["stages=[identity, textual_inversion]"],
     r"^stages must be \[textual_inversion, identity\], .*\(each once, in that order\), got \[identity, "
     r"textual_inversion\]$"),
    ("subject", ["stages=[identity, identity]"], r"^stages must be .*, got \[identity, identity\]$"),
    ("subject", ["identity.layers=[]"], r"^identity.layers is empty: give patterns of the cross-attention layers"),
    (MotionConfig, ["data.num_frames=1"], r"^data.num_frames must be at least 2 to learn a motion, got 1$"),
    (MotionConfig, ["adapter.targets=[]"], r"^adapter.targets \[\] are invalid: choose from attn1, attn2, ff$"),
], ids=["blank-base", "t0-equals-t1", "videos-past-limit", "no-captions", "ti-guidance-inf", "identity-guidance-inf",
        "stages-out-of-order", "stage-repeated", "no-identity-layers", "one-motion-frame", "no-motion-targets"])
def test_values_that_leave_nothing_to_run_or_pass_their_limit_are_refused(schema, sets, message):
    from vidbooth.config.subject import SubjectConfig

    with pytest.raises(UserError, match=message):
        load_config(SubjectConfig if schema == "subject" else schema, None, sets)


def test_a_class_noun_of_only_spaces_is_refused_where_textual_inversion_runs():
    from vidbooth.config.subject import SubjectConfig

    cfg = load_config(SubjectConfig, None, ["name=S*", "photos=dog/", "class_noun=   "])
    with pytest.raises(UserError, match=r"^--class-noun is required: what the subject is, e.g. --class-noun dog$"):
        cfg.check(("textual_inversion", "identity"))
    with pytest.raises(UserError, match="^--class-noun is required"):
        cfg.check(("textual_inversion",))
    cfg.check(("identity",))  # the identity stage alone adds to a subject that has its pseudo-word


def test_one_caption_may_serve_every_clip_but_not_some_of_them():
    cfg = MotionConfig(name="m", clips=["a.mp4", "b.mp4"], captions=["a dog waving"])
    cfg.check()
    assert (cfg.caption_for(0), cfg.caption_for(1)) == ("a dog waving", "a dog waving")
    with pytest.raises(UserError, match=r"^2 captions for 3 clips: give one --caption per clip or one for all$"):
        MotionConfig(name="m", clips=["a.mp4", "b.mp4", "c.mp4"], captions=["a", "b"]).check()


def test_unet_attention_heads_that_do_not_divide_its_channels_are_refused_naming_both():
    with pytest.raises(UserError, match=r"^arch.unet.attention_heads 3 must divide every arch.unet.block_out_channels "
                                        r"entry, got \[32, 64, 64\]$"):
        load_config(PretrainConfig, sets=["arch.unet.attention_heads=3"]).check()


@pytest.mark.parametrize("holds_a_run", [True, False])
def test_init_from_and_resume_together_are_refused(holds_a_run, tmp_path):
    """Told first, whatever the folder holds (a mistake in the command line, as docs/pretrain.md lists it): on one
    with no run, 'nothing to resume' had been told instead."""
    if holds_a_run:
        (tmp_path / "state.json").write_text("{}")  # a run to resume, so that only the two flags together are wrong
        PretrainConfig(out=str(tmp_path), resume=True).check()
    with pytest.raises(UserError, match=r"^give --init-from to start a run from a model, or --resume to continue a "
                                        r"run, not both$"):
        PretrainConfig(out=str(tmp_path), resume=True, init_from="nano").check()


@pytest.mark.parametrize("changes, message", [
    ({"data": {"num_frames": 1}}, r"^data.num_frames must be at least 2, got 1$"),
    ({"num_tokens": 17}, r"^num_tokens must be at most 16, got 17$"),
    ({"data": {"resolution": 4}}, r"^data.resolution must be at least 8 pixels, got 4$"),
    ({"hidden_dim": 0}, r"^hidden_dim must be at least 1, got 0$"),
    ({"data": {"clips": 100_001}}, r"^data.clips must be at most 100000, got 100001$"),
    ({"fine": {"lr": -1.0}}, r"^fine.lr must be a finite positive number, got -1.0$"),
    ({"coarse": {"mixed_precision": "no"}, "fine": {"mixed_precision": "fp16"}},
     r"^coarse.mixed_precision \(no\) and fine.mixed_precision \(fp16\) must be the same: one run holds one "),
], ids=["one-frame", "17-tokens", "4-pixels", "no-hidden-width", "clips-past-limit", "negative-fine-lr",
        "mixed-precisions-differ"])
def test_image_prompt_settings_out_of_range_are_refused_naming_the_key(changes, message):
    """(mutation testing: each of these refusals could be dropped with no test failing)"""
    from dataclasses import replace

    from vidbooth.config.image_prompt import MAX_CLIPS, ImagePromptConfig

    assert MAX_CLIPS == 100_000
    default = ImagePromptConfig()
    built = {key: replace(getattr(default, key), **value) if isinstance(value, dict) else value
             for key, value in changes.items()}
    with pytest.raises(UserError, match=message):
        ImagePromptConfig(**built)


@pytest.mark.parametrize("data, message", [
    ({"scale_jitter": 1.0}, r"^data.scale_jitter must be in \[0, 1\), got 1.0$"),
    ({"scale_jitter": -0.1}, r"^data.scale_jitter must be in \[0, 1\), got -0.1$"),
    ({"views": 0}, r"^data.views must be at least 1, got 0$"),
])
def test_subject_data_settings_out_of_range_are_refused_naming_the_key(data, message):
    from vidbooth.config.subject import SubjectConfig, SubjectDataConfig

    with pytest.raises(UserError, match=message):
        SubjectConfig(data=SubjectDataConfig(**data))


def test_the_subject_stages_of_one_run_take_one_mixed_precision():
    """Both stages run under one accelerator; a stage run alone may take its own."""
    from dataclasses import replace

    from vidbooth.config.subject import SubjectConfig

    cfg = SubjectConfig(name="S*", photos=["photos"], class_noun="dog")
    cfg.identity = replace(cfg.identity, train=replace(cfg.identity.train, mixed_precision="bf16"))
    with pytest.raises(UserError, match=r"^textual_inversion.train.mixed_precision and identity.train.mixed_precision "
                                        r"differ: one run uses one setting, so make them equal$"):
        cfg.check(("textual_inversion", "identity"))
    cfg.check(("identity",))
    cfg.check(("textual_inversion",))


def test_image_prompt_stages_default_to_a_faster_coarse_rate_than_fine():
    from vidbooth.config.image_prompt import ImagePromptConfig

    cfg = ImagePromptConfig()
    assert (cfg.coarse.lr, cfg.fine.lr) == (1e-3, 1e-4)
    assert cfg.coarse.mixed_precision == cfg.fine.mixed_precision == "auto"


def test_evaluate_reads_a_tilde_in_a_video_path_as_the_home_folder(tmp_path, monkeypatch):
    """(mutation testing: videos given as '~/a.mp4' were not expanded)"""
    from vidbooth.config.evaluate import EvaluateConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert EvaluateConfig(videos=["~/a.mp4", "b.mp4"]).videos == [str(tmp_path / "a.mp4"), "b.mp4"]


def test_a_demo_with_a_blank_out_is_refused_and_makes_8_videos_by_default():
    from vidbooth.config.demo import DemoConfig

    with pytest.raises(UserError, match=r"^--out is empty: give the folder the demo writes into \(default: demo\)$"):
        DemoConfig(out="  ")
    assert DemoConfig().num_videos == 8


@pytest.mark.parametrize("schema, key, meant", [
    (GenerateConfig, "guidance_scale", "'sampling.guidance_scale'"),  # had been 'motion_scale', which set another
    (GenerateConfig, "num_inference_steps", "'sampling.num_inference_steps'"),  # had been no guess
    (GenerateConfig, "sampling.guidanse_scale", "'sampling.guidance_scale'"),
    (SubjectConfig, "steps", "'textual_inversion.train.steps' or 'identity.train.steps'"),  # had been 'stages'
    (SubjectConfig, "textual_inversion.steps", "'textual_inversion.train.steps'"),
    (SubjectConfig, "resolution", "'data.resolution'"),
])
def test_an_unknown_key_is_told_the_setting_of_that_name_in_its_section(schema, key, meant):
    with pytest.raises(UserError, match=rf"config key '{key}' is not a setting \(did you mean {meant}\?\)"):
        load_config(schema, None, [f"{key}=5"])
    for far_off in ("zzzzzz", "runtime.zzzzzz"):  # nothing like it; not the section it was typed in either
        with pytest.raises(UserError) as told:
            load_config(schema, None, [f"{far_off}=5"])
        assert "did you mean" not in str(told.value)


def test_a_switch_set_to_null_is_told_it_takes_true_or_false():
    with pytest.raises(UserError, match=r"config key 'appearance.guidance' takes true or false, got null \(none\)"):
        load_config(MotionConfig, None, ["appearance.guidance=null"])


def test_a_recipe_with_a_control_character_is_one_line_naming_the_character(tmp_path):
    recipe = tmp_path / "bell.yaml"
    recipe.write_text("data:\n  fps: 4\x07\n")
    with pytest.raises(UserError) as refused:
        load_config(GenerateConfig, str(recipe))
    assert str(refused.value) == (f"recipe {recipe} is not valid YAML: unacceptable character #x0007: control "
                                  "characters are not allowed")


def test_a_recipe_interpolation_that_fails_names_the_recipe_and_not_a_whole_section(tmp_path):
    """The error came after the recipe was merged, so it named no file; one naming a section printed all of it."""
    recipe = tmp_path / "r.yaml"
    for text, problem in (("${nope}", "Interpolation key 'nope' not found"),
                          ("${textual_inversion}", "Cannot convert 'DictConfig' to string")):
        recipe.write_text(f"class_noun: {text}\n")
        with pytest.raises(UserError) as caught:
            load_config(SubjectConfig, str(recipe))
        message = str(caught.value)
        assert message.startswith(f"recipe {recipe}: config key 'class_noun': ") and problem in message
        assert "num_vectors" not in message and len(message) - len(str(recipe)) < 250


@pytest.mark.parametrize("key, flag", [
    ("motion", "--motion"), ("image_prompt", "--image-prompt"), ("image_prompt_model", "--image-prompt-model"),
])
def test_an_empty_name_or_path_for_generate_is_refused_not_left_out(key, flag):
    """`--motion "$MOTION"` with the variable unset had made the video without the motion, and said nothing."""
    with pytest.raises(UserError, match=rf"^{key} \({flag}\) is empty \(an unset shell variable\?\): give .*, or leave "
                                        "it out$"):
        load_config(GenerateConfig, None, None, {key: " "}, flags={key: flag})


@pytest.mark.parametrize("key", ["manifest", "subject", "ref_images", "motion", "ref_video", "json", "csv"])
def test_an_empty_name_or_path_for_evaluate_is_refused_not_left_out(key):
    """`--ref-images "$REFS"` with the variable unset had scored without the references (no CLIP-I, no DINO-I)."""
    from vidbooth.config.evaluate import EvaluateConfig

    flag = "--" + key.replace("_", "-")
    with pytest.raises(UserError, match=rf"^{key} \({flag}\) is empty \(an unset shell variable\?\)"):
        load_config(EvaluateConfig, None, None, {"videos": ["a.mp4"], key: ""})


def test_an_empty_video_for_evaluate_is_refused_not_a_traceback():
    """`vidbooth evaluate "$VIDEO"` with the variable unset had ended in "ValueError: PosixPath('.') has an empty
    name"."""
    from vidbooth.config.evaluate import EvaluateConfig

    with pytest.raises(UserError, match=r"^an empty video path was given \(an unset shell variable\?\): give the "
                                        r"video file, or a glob pattern of them$"):
        load_config(EvaluateConfig, None, None, {"videos": ["a.mp4", " "]})


def test_path_items_of_a_list_setting_from_python_are_no_empty_entries():
    """The empty-item check reads texts only: Path objects from Python are taken as given (no AttributeError)."""
    from pathlib import Path

    from vidbooth.config.evaluate import EvaluateConfig

    assert SubjectConfig(photos=[Path("dog"), "cat"]).photos == [Path("dog"), "cat"]
    assert MotionConfig(clips=[Path("a.mp4")]).clips == [Path("a.mp4")]
    assert EvaluateConfig(videos=[Path("a.mp4")]).videos == ["a.mp4"]


def test_only_a_list_setting_given_null_is_told_it_takes_a_list():
    """OmegaConf words null for a list and for a section alike ("field 'x' is not Optional"): a section is not a
    list (the command line tells a section given null apart before, so this is `_describe` alone)."""
    from omegaconf import OmegaConf

    from vidbooth.config.load import _describe

    def told(key: str) -> str:
        with pytest.raises(Exception) as caught:
            OmegaConf.merge(OmegaConf.structured(SubjectConfig), OmegaConf.create({key: None}))
        return _describe(caught.value, SubjectConfig)

    assert "takes a list" in told("photos")
    assert "takes a list" not in told("identity")
