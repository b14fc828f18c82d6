"""`vidbooth textual-inversion`, `identity-adapter` and `train-subject`: learn a subject from a few photos.

Each command parses its flags into a `SubjectConfig` (defaults < recipe < --set < flags) and calls one
engine function in `vidbooth.engine.subject`.
"""

from __future__ import annotations

import typer

from vidbooth.cli import options
from vidbooth.reporting import process_count, warn

Photos = typer.Argument(
    None,
    metavar="PHOTOS",
    help="3-5 photos of the subject (jpg, png, webp, bmp, gif, tiff, avif): a folder of them, or the files "
    "(photos/*.jpg); required unless the --recipe gives photos.",
)
LearnedPhotos = typer.Argument(
    None,
    metavar="PHOTOS",
    help="Photos of the subject, as train-subject takes them (default: the ones the subject was learned from).",
)
Name = typer.Option(
    None, "--name", "-n", metavar="NAME",
    help="The subject's name in the library and its pseudo-word in prompts, e.g. 'S*' (quoted) or sks (required "
    "unless the --recipe gives one).",
)
ClassNoun = typer.Option(
    None, "--class-noun", metavar="NOUN", help="What the subject is: dog, person, mug (required unless the --recipe "
    "gives one)."
)
NumVectors = typer.Option(None, "--num-vectors", metavar="N", help="Embedding vectors for the pseudo-word (default 1).")
HiddenRatio = typer.Option(
    None, "--hidden-ratio", metavar="FRACTION", help="Identity adapter width / layer width (default 0.5)."
)
Resolution = typer.Option(
    None, "--resolution", metavar="PX", help="Square training size in pixels (default: the model's; nano 64)."
)
Flip = typer.Option(
    None, "--flip/--no-flip", help="Augment with mirrored copies of the photos (default: on with nano, else off)."
)
ScaleJitter = typer.Option(
    None, "--scale-jitter", metavar="FRACTION", help="Augment with random zoom-ins up to this fraction, e.g. 0.1 "
    "(default 0: off)."
)
BatchSize = typer.Option(
    None, "--batch-size", metavar="N",
    help="Photos per training step on each process (default 4; train-subject: in each stage).",
)
CheckpointEvery = typer.Option(
    None, "--checkpoint-every", metavar="N",
    help="Save a resumable checkpoint every N steps (default: 100 on nano, else 500).",
)
PriorPreservation = typer.Option(
    None, "--prior-preservation/--no-prior-preservation",
    help="Also train on class images (DreamBooth; default: the recipe's, off in the shipped ones).",
)
ClassImages = typer.Option(
    None, "--class-images", metavar="DIR", help="Folder of class images (default: generate them with the base)."
)
NumClassImages = typer.Option(
    None, "--num-class-images", metavar="N", help="Class images to use (default: 8 on nano, else 200 as DreamBooth)."
)
PriorWeight = typer.Option(None, "--prior-weight", metavar="WEIGHT", help="Weight of the class-image loss (default 1).")
Preview = typer.Option(None, "--preview/--no-preview", help="Render preview.png into the subject (default: on).")
Overwrite = typer.Option(False, "--overwrite", help="Replace an existing subject of this name.")
Resume = typer.Option(False, "--resume", help="Continue an interrupted run from its last checkpoint.")

STAGE_KEYS = {"textual_inversion": "textual_inversion.train", "identity": "identity.train"}


def _common(photos, name, class_noun, resolution, flip, scale_jitter, preview, overwrite, resume, runtime: dict) -> dict:
    seeds = {f"{key}.seed": runtime["runtime.seed"] for key in STAGE_KEYS.values()}  # --seed seeds everything
    return runtime | seeds | {
        "photos": photos or None,
        "name": name,
        "class_noun": class_noun,
        "data.resolution": resolution,
        "data.flip": flip,
        "data.scale_jitter": scale_jitter,
        "preview.enabled": preview,
        "overwrite": overwrite or None,
        "resume": resume or None,
    }


def _train_flags(stage: str, steps, lr, batch_size, checkpoint_every, gradient_checkpointing) -> dict:
    values = {"steps": steps, "lr": lr, "batch_size": batch_size, "checkpoint_every": checkpoint_every,
              "gradient_checkpointing": gradient_checkpointing}
    return {f"{STAGE_KEYS[stage]}.{field}": value for field, value in values.items()}


COMMON_FLAGS = {"data.resolution": "--resolution", "data.scale_jitter": "--scale-jitter"}
PRIOR_FLAGS = {"prior.num_class_images": "--num-class-images", "prior.weight": "--prior-weight"}


def _train_flag_names(stage: str, steps_flag: str, lr_flag: str | None) -> dict[str, str]:
    """Config key -> this command's flag for a stage's training settings, for the error of a bad value."""
    names = {"steps": steps_flag, "lr": lr_flag, "batch_size": "--batch-size", "checkpoint_every": "--checkpoint-every"}
    return {f"{STAGE_KEYS[stage]}.{field}": flag for field, flag in names.items() if flag}


def _prior_flags(prior_preservation, class_images, num_class_images, prior_weight) -> dict:
    return {
        "prior.enabled": prior_preservation,
        "prior.class_images": class_images,
        "prior.num_class_images": num_class_images,
        "prior.weight": prior_weight,
    }


PRIOR_SETTINGS = ("class_images", "num_class_images", "weight", "prompt", "num_inference_steps", "guidance_scale",
                  "sample_batch_size")
"""The prior's settings besides `enabled`, which act only with prior preservation."""


def _check_prior_flags(cfg, prior_preservation, class_images, num_class_images, prior_weight,
                       sets: list[str] | None = None) -> None:
    """The prior's flags do nothing without prior preservation (the flag, or `prior.enabled` in the recipe or a
    --set): refuse them rather than ignore them. Its settings given with --set are warned of (a script may pass
    them to every run, as a recipe may hold them)."""
    from vidbooth.config.load import given_by

    if not cfg.prior.enabled:
        givers = [given_by(f"prior.{key}", None, sets, {}) for key in PRIOR_SETTINGS]
        for shown in dict.fromkeys(giver[1] for giver in givers if giver):  # `--set prior={...}` gives several
            warn(f"{shown} has no effect without --prior-preservation")
    if class_images is not None and not class_images.strip():  # an unset $DIR: it had generated them silently
        from vidbooth.errors import UserError

        raise UserError("--class-images is empty: give the folder of class images, or drop it to generate them")
    given = {"--class-images": class_images, "--num-class-images": num_class_images, "--prior-weight": prior_weight}
    named = [flag for flag, value in given.items() if value is not None]
    if named and not cfg.prior.enabled:
        from vidbooth.errors import UserError

        flags = " and ".join(named)
        if prior_preservation is False:
            raise UserError(f"{flags} and --no-prior-preservation contradict each other: drop one")
        raise UserError(
            f"{flags} {'needs' if len(named) == 1 else 'need'} --prior-preservation (without it no class images "
            f"are used): add --prior-preservation, or drop {flags}"
        )


def _check_stage_flags(cfg, given: dict[str, dict[str, object]]) -> None:
    """train-subject runs the stages `cfg.stages` names (a subject's config.yaml may name one): a flag of a stage
    that will not run would do nothing, so it is refused. `given`: stage -> {flag: value, None when not given}."""
    for stage, flags in given.items():
        named = [flag for flag, value in flags.items() if value is not None]
        if named and stage not in cfg.stages:
            from vidbooth.errors import UserError

            listed = " and ".join(named)
            raise UserError(
                f"{listed} {'acts' if len(named) == 1 else 'act'} on the {stage} stage, which this run leaves out "
                f"(stages: {list(cfg.stages)}): drop {listed}, or run both with "
                "--set 'stages=[textual_inversion,identity]'"
            )


STAGE_OF_SECTION = {"textual_inversion": "textual_inversion", "identity": "identity", "prior": "identity"}
"""The stage each stage-only section of the config acts on."""


def _check_stage_sets(stages, sets: list[str] | None, command: str | None = None) -> None:
    """A --set of a section whose stage this run leaves out does nothing: warned of (the stages' flags are
    refused; a script may pass such settings to every run, as a recipe may hold them). So is --set stages=... to
    `command`, which runs its one stage whatever the setting says."""
    for item in sets or []:
        section = item.partition("=")[0].strip().split(".")[0]
        if command and section == "stages":
            warn(f"--set {item.strip()} has no effect: {command} runs the {stages[0]} stage alone (train-subject "
                 "runs the stages it names)")
        stage = STAGE_OF_SECTION.get(section)
        if stage is not None and stage not in stages:
            warn(f"--set {item.strip()} has no effect: it acts on the {stage} stage, which this run leaves out")


def _check_photos(cfg, stages: tuple[str, ...], recipe: str | None, sets: list[str] | None, overrides: dict) -> None:
    """The name, and given photos: what the stages need (cfg.check) and a photo path that is not there are told now,
    before the engine and torch are imported (seconds). (None given: identity-adapter takes the subject's own, found
    there.) An empty name or class noun is told as the recipe's or the --set's that gave it."""
    from vidbooth.config.checks import EmptySetting
    from vidbooth.config.load import told_as_given
    from vidbooth.data.images import check_photos_exist

    try:
        if cfg.photos:
            cfg.check(stages)
        else:
            cfg.check_name()
    except EmptySetting as exc:
        raise told_as_given(exc, recipe, sets, overrides, cfg.SETTINGS_NAME) from exc
    if cfg.photos:
        options.inputs_exist(lambda: check_photos_exist(cfg.photos), cfg.photos, "photo path", "photos", recipe, sets,
                             overrides, "PHOTOS")


def _load(recipe, sets, overrides, flags: dict[str, str]):
    from vidbooth.config import load_config
    from vidbooth.config.load import recipe_or_default
    from vidbooth.config.subject import SubjectConfig

    recipe = recipe_or_default(recipe, "subject", sets, overrides)
    return load_config(SubjectConfig, recipe, sets, overrides, flags=flags)


def textual_inversion(
    photos: list[str] = Photos,
    name: str = Name,
    class_noun: str = ClassNoun,
    num_vectors: int = NumVectors,
    steps: int = typer.Option(
        None, "--steps", metavar="N", help="Training steps (default: 600 on nano, else 3000 as DreamVideo)."
    ),
    lr: float = typer.Option(
        None, "--lr", metavar="LR", help="Learning rate (default: 5e-3 on nano, else 1e-4 as DreamVideo)."
    ),
    batch_size: int = BatchSize,
    checkpoint_every: int = CheckpointEvery,
    gradient_checkpointing: bool = options.GradientCheckpointing,
    resolution: int = Resolution,
    flip: bool = Flip,
    scale_jitter: float = ScaleJitter,
    preview: bool = Preview,
    overwrite: bool = Overwrite,
    resume: bool = Resume,
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.TrainingPrecision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("subject"),
    sets: list[str] = options.Sets,
) -> None:
    """Learn a pseudo-word for the subject (stage 1): only its embedding trains."""
    runtime = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed)
    overrides = _common(photos, name, class_noun, resolution, flip, scale_jitter, preview, overwrite, resume, runtime)
    overrides |= _train_flags("textual_inversion", steps, lr, batch_size, checkpoint_every, gradient_checkpointing)
    overrides["textual_inversion.num_vectors"] = num_vectors
    flags = COMMON_FLAGS | _train_flag_names("textual_inversion", "--steps", "--lr")
    flags["textual_inversion.num_vectors"] = "--num-vectors"
    _check_stage_sets(["textual_inversion"], sets, "textual-inversion")
    cfg = _load(recipe, sets, overrides, flags)
    options.warn_of_idle_sets(cfg, sets)
    _check_photos(cfg, ("textual_inversion",), recipe, sets, overrides)
    from vidbooth.engine.subject import train_textual_inversion  # after the cheap checks: it loads torch

    train_textual_inversion(cfg)


def identity_adapter(
    photos: list[str] = LearnedPhotos,
    name: str = typer.Option(
        None, "--name", "-n", metavar="NAME",
        help="The subject to extend, learned by textual-inversion (required unless the --recipe gives one).",
        autocompletion=options.learned_names("subject"),
    ),
    hidden_ratio: float = HiddenRatio,
    steps: int = typer.Option(
        None, "--steps", metavar="N", help="Training steps (default: 300 on nano, else 1000 as DreamVideo)."
    ),
    lr: float = typer.Option(
        None, "--lr", metavar="LR", help="Learning rate (default: 3e-3 on nano, else 1e-5 as DreamVideo)."
    ),
    batch_size: int = BatchSize,
    checkpoint_every: int = CheckpointEvery,
    gradient_checkpointing: bool = options.GradientCheckpointing,
    resolution: int = Resolution,
    flip: bool = Flip,
    scale_jitter: float = ScaleJitter,
    prior_preservation: bool = PriorPreservation,
    class_images: str = ClassImages,
    num_class_images: int = NumClassImages,
    prior_weight: float = PriorWeight,
    preview: bool = Preview,
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain the subject's existing identity adapter."),
    resume: bool = Resume,
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.TrainingPrecision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("subject"),
    sets: list[str] = options.Sets,
) -> None:
    """Train the identity adapter of an existing subject (stage 2), its pseudo-word frozen."""
    runtime = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed)
    overrides = _common(photos, name, None, resolution, flip, scale_jitter, preview, overwrite, resume, runtime)
    overrides |= _train_flags("identity", steps, lr, batch_size, checkpoint_every, gradient_checkpointing)
    overrides |= _prior_flags(prior_preservation, class_images, num_class_images, prior_weight)
    overrides["identity.hidden_ratio"] = hidden_ratio
    overrides |= options.learned_backbone(recipe, sets, overrides, [("subject", name)] if name else [])
    flags = COMMON_FLAGS | PRIOR_FLAGS | _train_flag_names("identity", "--steps", "--lr")
    flags["identity.hidden_ratio"] = "--hidden-ratio"
    _check_stage_sets(["identity"], sets, "identity-adapter")
    cfg = _load(recipe, sets, overrides, flags)
    options.warn_of_a_recipe_base(cfg.backbone.base, recipe, sets, overrides, [("subject", name)] if name else [])
    _check_prior_flags(cfg, prior_preservation, class_images, num_class_images, prior_weight, sets)
    options.warn_of_idle_sets(cfg, sets)
    _check_photos(cfg, ("identity",), recipe, sets, overrides)
    # the subject that stage 2 extends: a misspelt name is told before torch is imported (under a launcher, by the
    # engine once the processes have met: on several machines, one library may hold it and another not)
    if cfg.name and process_count() == 1:
        from vidbooth.library import artifact_dir

        artifact_dir("subject", cfg.name)
    from vidbooth.engine.subject import train_identity_adapter  # after the cheap checks: it loads torch

    train_identity_adapter(cfg)


def train_subject(
    photos: list[str] = Photos,
    name: str = Name,
    class_noun: str = ClassNoun,
    num_vectors: int = NumVectors,
    hidden_ratio: float = HiddenRatio,
    ti_steps: int = typer.Option(
        None, "--ti-steps", metavar="N", help="Textual-inversion steps (default: 600 on nano, else 3000 as DreamVideo)."
    ),
    identity_steps: int = typer.Option(
        None, "--identity-steps", metavar="N",
        help="Identity-adapter steps (default: 300 on nano, else 1000 as DreamVideo).",
    ),
    batch_size: int = BatchSize,
    checkpoint_every: int = CheckpointEvery,
    gradient_checkpointing: bool = options.GradientCheckpointing,
    resolution: int = Resolution,
    flip: bool = Flip,
    scale_jitter: float = ScaleJitter,
    prior_preservation: bool = PriorPreservation,
    class_images: str = ClassImages,
    num_class_images: int = NumClassImages,
    prior_weight: float = PriorWeight,
    preview: bool = Preview,
    overwrite: bool = Overwrite,
    resume: bool = Resume,
    base: str = options.Base,
    motion_adapter: str = options.MotionAdapterPath,
    device: str = options.Device,
    precision: str = options.TrainingPrecision,
    attention: str = options.Attention,
    seed: int = options.Seed,
    recipe: str = options.recipe("subject"),
    sets: list[str] = options.Sets,
) -> None:
    """Learn a subject from photos: pseudo-word, then identity adapter (DreamVideo's subject learning)."""
    runtime = options.runtime_overrides(base, motion_adapter, device, precision, attention, seed)
    overrides = _common(photos, name, class_noun, resolution, flip, scale_jitter, preview, overwrite, resume, runtime)
    overrides |= _train_flags("textual_inversion", ti_steps, None, batch_size, checkpoint_every, gradient_checkpointing)
    overrides |= _train_flags("identity", identity_steps, None, batch_size, checkpoint_every, gradient_checkpointing)
    overrides |= _prior_flags(prior_preservation, class_images, num_class_images, prior_weight)
    overrides |= {"textual_inversion.num_vectors": num_vectors, "identity.hidden_ratio": hidden_ratio}
    flags = COMMON_FLAGS | PRIOR_FLAGS | _train_flag_names("textual_inversion", "--ti-steps", None)
    flags |= _train_flag_names("identity", "--identity-steps", None)
    flags |= {"textual_inversion.num_vectors": "--num-vectors", "identity.hidden_ratio": "--hidden-ratio"}
    cfg = _load(recipe, sets, overrides, flags)
    if "textual_inversion" not in cfg.stages and cfg.name:  # adds to a subject: its base, as identity-adapter takes
        learned = options.learned_backbone(recipe, sets, overrides, [("subject", cfg.name)])
        if learned:
            cfg = _load(recipe, sets, overrides | learned, flags)
        options.warn_of_a_recipe_base(cfg.backbone.base, recipe, sets, overrides, [("subject", cfg.name)])
    _check_stage_flags(cfg, {
        "textual_inversion": {"--num-vectors": num_vectors, "--ti-steps": ti_steps},
        "identity": {
            "--identity-steps": identity_steps, "--hidden-ratio": hidden_ratio,
            "--prior-preservation": prior_preservation or None, "--class-images": class_images,  # a "no" does nothing
            "--num-class-images": num_class_images, "--prior-weight": prior_weight,
        },
    })  # fmt: skip
    _check_stage_sets(cfg.stages, sets)
    _check_prior_flags(cfg, prior_preservation, class_images, num_class_images, prior_weight, sets)
    options.warn_of_idle_sets(cfg, sets)
    _check_photos(cfg, tuple(cfg.stages), recipe, sets, overrides)
    from vidbooth.engine.subject import train_subject as run_train_subject  # after the cheap checks: torch

    run_train_subject(cfg)
