"""Flags shared by several commands, so that every command spells them the same way."""

from __future__ import annotations

import typer


def recipe(command: str):
    """--recipe of a command whose recipes are shipped as recipes/<model>/<command>.yaml."""
    from vidbooth import shipped_recipes

    return typer.Option(
        None, "--recipe", "-r", metavar="RECIPE",
        help=f"Recipe: a YAML file, or a shipped one ({', '.join(shipped_recipes(command))}), whose settings replace "
        f"the defaults the other flags name (default: nano/{command} when the base is nano).",
    )


Sets = typer.Option(
    None,
    "--set",
    metavar="KEY=VALUE",
    help="Override any config key of this command (its docs page lists them): --set key=value (repeatable).",
)


def learned_names(kind: str):
    """Shell completion of a library name of `kind` (`vidbooth --install-completion`): the names that start with what
    was typed; none when the library cannot be read (completion never fails aloud)."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        import os

        from vidbooth.library import known_names

        home = ctx.find_root().params.get("home")  # a --home earlier on the line (its callback does not run here)
        if home:
            os.environ["VIDBOOTH_HOME"] = home  # this process only answers the shell, then ends
        try:
            return [name for name in known_names(kind) if name.startswith(incomplete)]
        except Exception:  # a library that is a file, unreadable, ...: nothing to offer
            return []

    return complete


Base = typer.Option(
    None, "--base", metavar="MODEL", help="Base model: diffusers folder, hub id, or built-in name (default: nano)."
)
MotionAdapterPath = typer.Option(
    None, "--motion-adapter", metavar="MODEL",
    help="AnimateDiff MotionAdapter (folder or hub id) for an SD1.5 base; without one, its videos are zero-shot "
    "(Text2Video-Zero).",
)
Device = typer.Option(
    None, "--device", metavar="DEVICE", help="Device: auto | cpu | cuda | cuda:N (default auto: CUDA when there is "
    "one)."
)
Precision = typer.Option(
    None, "--precision", metavar="PRECISION",
    help="Precision: auto | fp32 | fp16 | bf16 (default: the recipe's, fp32 in nano's; auto: fp16 on CUDA, fp32 on "
    "CPU).",
)
TrainingPrecision = typer.Option(
    None, "--precision", metavar="PRECISION",
    help="Precision of the frozen base: auto | fp32 | fp16 | bf16 (default: the recipe's, fp32 in nano's; auto: "
    "fp16 on CUDA, fp32 on CPU). The trained weights stay fp32 (docs/precision.md).",
)
GradientCheckpointing = typer.Option(
    None, "--gradient-checkpointing/--no-gradient-checkpointing",
    help="Recompute the UNet's activations in the backward pass instead of keeping them: much less memory for "
    "about 1.3x the step time, the same trained weights (default: off; docs/precision.md).",
)
Attention = typer.Option(
    None, "--attention", metavar="BACKEND", help="Attention backend: auto | sdpa | xformers | math (default auto: "
    "xformers on CUDA when installed, else sdpa).",
)
Seed = typer.Option(
    None, "--seed", metavar="N", help="Random seed (default 0): the same seed and settings, the same result."
)


def runtime_overrides(base, motion_adapter, device, precision, attention, seed) -> dict:
    """Explicit flags as dotted config keys (None = not given)."""
    return {
        "backbone.base": base,
        "backbone.motion_adapter": motion_adapter,
        "runtime.device": device,
        "runtime.precision": precision,
        "runtime.attention": attention,
        "runtime.seed": seed,
    }


def _one_motion_adapter(found: set[tuple]) -> set[tuple]:
    """Backbone settings that differ only in that some have a motion adapter and the others none (a subject learned
    on an image model, a motion learned with an adapter on it) as one, with the adapter; else as they are."""
    settings = [dict(items) for items in found]
    image_models = {tuple(sorted((k, v) for k, v in s.items() if k != "motion_adapter")) for s in settings}
    adapters = {s.get("motion_adapter") for s in settings} - {None}
    if len(found) < 2 or len(image_models) != 1 or len(adapters) != 1:
        return found
    return {tuple(sorted((dict(image_models.pop()) | {"motion_adapter": adapters.pop()}).items()))}


def learned_backbone(recipe: str | None, sets: list[str] | None, overrides: dict, named: list[tuple[str, str]]) -> dict:
    """Without --base, `--set backbone.base=` or --recipe: the backbone settings (base, motion adapter, revision,
    variant) that the named library artifacts (kind, name) were learned with, as dotted config keys, when they
    all agree and name another base than the default; using them on any other base is an error. What a flag or
    --set gives stays. Empty when nothing applies (an unknown name is reported by the command itself)."""
    from pathlib import Path

    from vidbooth.config.load import SHIPPED_BASE, given_base
    from vidbooth.errors import UserError
    from vidbooth.reporting import info

    if recipe or given_base(sets, overrides) or not named:
        return {}
    learned = _recorded_backbone(named)
    if learned.get("backbone.base", SHIPPED_BASE) == SHIPPED_BASE and len(learned) <= 1:
        return {}
    names, were = _learned_names(named)
    set_keys = {item.split("=", 1)[0].strip() for item in sets or [] if "=" in item}
    kept = {key: value for key, value in learned.items() if overrides.get(key) is None and key not in set_keys}
    for key, flag in (("backbone.base", "--base"), ("backbone.motion_adapter", "--motion-adapter")):
        folder = kept.get(key)  # a local folder is recorded absolute
        if isinstance(folder, str) and Path(folder).is_absolute() and not Path(folder).exists():
            what = "base" if flag == "--base" else "motion adapter"
            raise UserError(f"the {what} {folder}, on which {names} {were} learned, is no longer there: move it back, "
                            f"or give its new place with {flag}")
    info(f"using base {learned.get('backbone.base')}, on which {names} {were} learned (--base chooses another)")
    return kept


def warn_of_a_recipe_base(base: str, recipe: str | None, sets: list[str] | None, overrides: dict,
                          named: list[tuple[str, str]]) -> None:
    """With --recipe and no --base: a warning, before the model loads, where the recipe's `base` is not the one the
    named artifacts were learned on. A shipped recipe names a hub id, which then replaced the local copy they were
    learned on: a download, or offline an error that named neither (and the artifacts are refused on another)."""
    import shlex

    from vidbooth.config.checks import BUILTIN_BASES
    from vidbooth.config.load import SHIPPED_BASE, given_base, given_by
    from vidbooth.fileio import absolute_path
    from vidbooth.reporting import warn

    if not recipe or given_base(sets, overrides) or not named:
        return
    recorded = _recorded_backbone(named)
    learned = recorded.get("backbone.base", SHIPPED_BASE)
    if not recorded or not isinstance(learned, str):
        return
    if absolute_path(learned, BUILTIN_BASES) == absolute_path(base, BUILTIN_BASES):  # '..' and links resolved
        return
    names, were = _learned_names(named)
    sets_base = (f"sets the base {base}" if given_by("backbone.base", recipe, sets, overrides)
                 else f"sets no base (so the default, {base})")
    warn(f"recipe {recipe} {sets_base}, not {learned}, on which {names} {were} learned: add --base "
         f"{shlex.quote(learned)} to use that one")


def _learned_names(named: list[tuple[str, str]]) -> tuple[str, str]:
    return " and ".join(f"{kind} {name}" for kind, name in named), "was" if len(named) == 1 else "were"


def _recorded_backbone(named: list[tuple[str, str]]) -> dict:
    """The backbone settings the named artifacts were learned with, as dotted config keys (a local base's revision
    left out: it has no effect there); empty where they differ or one cannot be read."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from vidbooth.config.checks import local_base
    from vidbooth.config.load import SHIPPED_BASE
    from vidbooth.errors import UserError
    from vidbooth.library import artifact_dir, read_manifest

    found = set()
    for kind, name in named:
        try:
            folder = artifact_dir(kind, name)
            manifest = read_manifest(folder, verify=False)
            recorded = manifest.get("config")  # config.yaml is a copy for rerunning: its user may edit or delete it
            config = (OmegaConf.create(recorded) if isinstance(recorded, dict)
                      else OmegaConf.load(folder / manifest["paths"]["config"]))
            backbone = OmegaConf.to_container(config.get("backbone") or OmegaConf.create())
        except (UserError, OSError, KeyError, TypeError, ValueError, yaml.YAMLError, OmegaConfBaseException):
            return {}
        found.add(tuple(sorted((key, value) for key, value in backbone.items() if value is not None)))
    found = _one_motion_adapter(found)
    if len(found) != 1:
        return {}
    learned = {f"backbone.{key}": value for key, value in found.pop()}
    base = learned.get("backbone.base", SHIPPED_BASE)
    if isinstance(base, str) and local_base(base):
        learned.pop("backbone.revision", None)  # recorded, but of no effect on a local or built-in model
    return learned


def warn_of_idle_sets(cfg, sets: list[str] | None) -> None:
    """Settings given with --set that this run cannot use are warned of rather than ignored: the preview's, with
    the preview off; the number of augmented views, with no augmentation (train-subject's flip or scale jitter)."""
    from vidbooth.config.load import given_by
    from vidbooth.reporting import warn

    idle = {}
    if not cfg.preview.enabled:
        off = "the preview is off (--preview turns it on)"
        idle |= {f"preview.{key}": off for key in vars(cfg.preview) if key != "enabled"}
    data = getattr(cfg, "data", None)
    if hasattr(data, "views") and not (data.flip or data.scale_jitter > 0):
        idle["data.views"] = "the photos are not augmented (--flip or --scale-jitter makes the views)"
    for key, reason in idle.items():
        if where := given_by(key, None, sets, {}):
            warn(f"{where[1]} has no effect: {reason}")


def inputs_exist(check, paths: list[str], what: str, key: str, recipe: str | None, sets: list[str] | None,
                 overrides: dict, argument: str) -> None:
    """`check()`, the check of the input `paths` of config key `key`; first, a path that is not there and that the
    recipe named (the config.yaml of a subject or motion whose photos or clips have moved since) is told as the
    recipe's, with `argument` on the command line to replace it. Under a launcher of several processes, nothing: the
    engine checks them once the processes have met, so that all stop together (on several machines one may lack a
    file that the others have, and a process that stopped alone had left them waiting for it)."""
    import glob
    import os

    from vidbooth.reporting import process_count

    if process_count() > 1:
        return

    missing = [path for path in paths if not glob.has_magic(path) and not os.path.lexists(os.path.expanduser(path))]
    if missing:
        from vidbooth.config.load import find_recipe, given_by
        from vidbooth.errors import UserError

        where = given_by(key, recipe, sets, overrides)  # an empty path: refused, as theirs, by load_config
        if where and where[0] == "recipe":
            raise UserError(f"{what} not found: {missing[0]}, named by the recipe {find_recipe(recipe)} (moved "
                            f"since?): give {argument} on the command line to use others")
    check()
