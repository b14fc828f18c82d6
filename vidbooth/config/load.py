"""Merge defaults < recipe YAML < `--set a.b=c` < explicit flags into a typed config, with clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException

from vidbooth import RECIPES_DIR, shipped_recipes
from vidbooth.config.checks import EmptySetting
from vidbooth.errors import UserError, yaml_problem
from vidbooth.fileio import expand_user

T = TypeVar("T")


def find_recipe(recipe: str, kind: str | None = None) -> Path:
    """A recipe is a YAML path, or a name under `recipes/` such as 'zeroscope/generate'; `kind`: the command's
    recipe name ('generate'), whose shipped recipes alone an unknown one is told."""
    path = expand_user(recipe)  # --recipe=~/r.yaml reaches us with its ~
    if path.is_file():
        return path
    if path.is_dir():
        raise UserError(f"recipe {recipe} is a folder: give a YAML file in it (or a recipe name)")
    candidate = RECIPES_DIR / (recipe if recipe.endswith(".yaml") else recipe + ".yaml")
    if candidate.is_file():
        return candidate
    known = shipped_recipes(kind) if kind else []  # evaluate's and demo's: none
    shipped = f" or one of: {', '.join(known)}" if known else " (this command ships none)"
    raise UserError(f"recipe '{recipe}' not found: give a YAML file{shipped}")


SHIPPED_BASE = "nano"
"""The built-in base whose own recipes (`recipes/nano/<command>.yaml`) apply when no --recipe is given."""


def recipe_or_default(
    recipe: str | None, command: str, sets: list[str] | None, overrides: dict[str, Any]
) -> str | None:
    """`recipe`, or `nano/<command>` when none is given and the base (flag, `--set backbone.base=`, else the
    default) is the shipped nano model: its settings (10 sampling steps, the motion recipe's timesteps) are
    what make nano work, and the generic defaults are those of the large models."""
    if recipe is not None:  # an empty one too: load_config refuses it
        return recipe
    base = given_base(sets, overrides) or SHIPPED_BASE
    if base != SHIPPED_BASE or not (RECIPES_DIR / SHIPPED_BASE / f"{command}.yaml").is_file():
        return None
    return f"{SHIPPED_BASE}/{command}"


def given_base(sets: list[str] | None, overrides: dict[str, Any]) -> str | None:
    """The base model named by the --base flag or `--set backbone.base=`; None when neither names one."""
    base = None
    for item in sets or []:
        key, equals, text = item.partition("=")
        if equals and key.strip() == "backbone.base":  # load_config reports a malformed --set
            base = _unquoted(text)
    return overrides.get("backbone.base") or base


def given_by(
    key: str, recipe: str | None, sets: list[str] | None, overrides: dict[str, Any], flag: str | None = None
) -> tuple[str, str] | None:
    """Where the config key `key` gets a value from, and how a message names it: ('flag', '--fps 4') when its flag
    gave one (`overrides` holds the flags by key), else ('set', '--set data.fps=4') for the last `--set` that gives
    it (`--set data={fps: 4}` too), else ('recipe', 'data.fps: 4 in recipe PATH'); None when none of them gives it
    a value (the default stands). Call it after `load_config`, which reports a recipe that cannot be read."""
    value = overrides.get(key)
    if value is not None:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        return "flag", f"{flag or key} {shown}"
    for item in reversed(sets or []):
        set_key, equals, text = item.partition("=")
        set_key = set_key.strip()
        if equals and (set_key == key or key.startswith(f"{set_key}.") and _sets(set_key, text, key)):
            return "set", f"--set {item.strip()}"
    if recipe:
        path = find_recipe(recipe)
        try:
            value = OmegaConf.select(OmegaConf.load(path), key, default=None, throw_on_missing=False)
        except Exception:  # load_config has read it: nothing more to say
            return None
        if value is not None:
            return "recipe", f"{key}: {value} in recipe {path}"
    return None


def _sets(set_key: str, text: str, key: str) -> bool:
    """Whether `--set set_key=text`, a section given whole (`data={stride: 2}`), gives the key `key` a value."""
    try:
        return OmegaConf.select(OmegaConf.from_dotlist([f"{set_key}={text}"]), key, default=None) is not None
    except Exception:  # load_config has reported a --set it cannot read
        return False


_VALUE_KINDS = {"Integer": "a whole number", "Float": "a number"}


def _describe(exc: OmegaConfBaseException, schema: type | None = None) -> str:
    """OmegaConf's error in the user's terms: the key, what it takes or what is near it, where the settings are
    listed; not OmegaConf's class names ("Key 'x' not in 'SamplingConfig'")."""
    key = getattr(exc, "full_key", None)
    msg = str(exc).splitlines()[0]
    if key and isinstance(exc, ConfigKeyError) and " not in '" in msg:
        meant = _meant(key, schema) if schema is not None else []
        guess = f" (did you mean {' or '.join(repr(m) for m in meant)}?)" if meant else ""
        page = getattr(schema, "SETTINGS_NAME", None)
        listed = f": docs/{page}.md in the vidbooth repository lists the settings" if page else ""
        return f"config key '{key}' is not a setting{guess}{listed}"
    if key and (converted := re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)$", msg)):
        kind = _VALUE_KINDS.get(converted.group(2), converted.group(2).lower())
        return f"config key '{key}' takes {kind}, got '{converted.group(1)}'"
    if key and (invalid_bool := re.match(r"Value '(.*)' is not a valid bool", msg)):
        return f"config key '{key}' takes true or false, got '{invalid_bool.group(1)}'"
    if key and (none := re.match(r"Incompatible value 'None' for field of type '(\w+)'$", msg)):
        kind = {"int": "a whole number", "float": "a number", "bool": "true or false"}.get(none[1], f"a {none[1]}")
        return f"config key '{key}' takes {kind}, got null (none): give a value"
    if key and "is not a ListConfig, TupleConfig, list, or tuple" in msg:
        return f"config key '{key}' takes a list, written [a, b] (one item: [a]), got '{getattr(exc, 'value', '')}'"
    if (key and re.fullmatch(r"field '.*' is not Optional", msg) and schema is not None  # `photos: ~`, `=null`
            and OmegaConf.is_list(OmegaConf.select(OmegaConf.structured(schema), key))):  # had been OmegaConf's words
        return (f"config key '{key}' takes a list, written [a, b] (one item: [a]), got null (none): give one, or "
                "leave the setting out")
    null_item = r"Invalid type assigned: NoneType is not a subclass of \w+\. value: None$"
    if key and key.endswith("]") and re.match(null_item, msg):  # `photos: [~]`: had been told as 'takes settings'
        return f"{key.rpartition('[')[0]} holds a null item ({key}): write its value there or remove it"
    if key and (not_settings := re.match(r"Invalid type assigned: \w+ is not a subclass of \w+\. value: (.*)$", msg)):
        return f"config key '{key}' takes settings, written {{key: value, ...}}, got '{not_settings[1]}'"
    if isinstance(exc, InterpolationResolutionError):  # only a recipe's texts are read as OmegaConf's
        msg = re.sub(r"(Cannot convert '\w+' to string): '.*'$", r"\1 (it names a section, not a setting)", msg)
        msg += " (a recipe's ${...} refers to another setting: write \\${ for the text ${)"
    return f"config key '{key}': {msg}" if key else msg


def _meant(key: str, schema: type) -> list[str]:
    """The settings of `schema` that an unknown `key` most likely meant: those of the same last name (a key typed
    without its section: `guidance_scale` is `sampling.guidance_scale`), within the section typed where it holds
    some; else one spelled much like it. OmegaConf's own guess looks at the same level only: `--set guidance_scale=5`
    had been told 'did you mean motion_scale', which then set another setting."""
    import difflib

    paths = _setting_paths(OmegaConf.structured(schema))
    typed = key.split(".")
    same_name = [path for path in paths if path.split(".")[-1] == typed[-1] and path != key]
    within = [path for path in same_name if len(typed) > 1 and path.startswith(typed[0] + ".")]
    if within or same_name:
        return (within or same_name)[:3]
    others = [path for path in paths if not key.startswith(path + ".")]  # not the section the key was typed in
    return difflib.get_close_matches(key, others, n=1, cutoff=0.8)


def _setting_paths(node: Any, prefix: str = "") -> list[str]:
    """Every setting's and section's dotted name under `node`."""
    paths = []
    for name in node:
        child = node._get_node(name)
        paths.append(f"{prefix}{name}")
        if OmegaConf.is_dict(child) and not OmegaConf.is_missing(node, name) and child._value() is not None:
            paths += _setting_paths(child, f"{prefix}{name}.")
    return paths


def load_config(
    schema: type[T],
    recipe: str | None = None,
    sets: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    flags: dict[str, str] | None = None,
) -> T:
    """Return a `schema` instance. Unknown keys and wrong types raise UserError naming the key.

    `overrides` holds explicit CLI flags as dotted keys; `None` values mean "not given" and are skipped.
    `flags` maps dotted keys to the command's flag for them, so that the error of a bad value names the flag too.
    """
    if recipe is not None and not recipe.strip():  # else the default settings, in place of the recipe meant
        raise UserError("--recipe is empty (an unset shell variable?): give a recipe file or name, or leave it out")
    source = ""  # where an interpolation, resolved once everything is merged, was written
    try:
        merged = OmegaConf.structured(schema)
        if recipe:
            path = find_recipe(recipe, getattr(schema, "SETTINGS_NAME", None))
            source = f"recipe {path}: "
            try:
                loaded = OmegaConf.load(path)
            except UnicodeDecodeError as exc:
                raise UserError(f"recipe {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                f"{exc.start}): save it as UTF-8") from exc
            except Exception as exc:  # yaml errors have many types
                raise UserError(f"recipe {path} is not valid YAML: {yaml_problem(exc, path)}") from exc
            if not OmegaConf.is_dict(loaded):
                raise UserError(f"recipe {path} must be a mapping of settings (key: value), got a YAML list or value")
            _texts_as_written(merged, loaded, path)
            try:
                _check_sections(merged, loaded, f"recipe {path}: ")
                merged = OmegaConf.merge(merged, _strings_as_lists(merged, loaded))
            except ConfigKeyError as exc:
                other_command = "." not in str(getattr(exc, "full_key", "") or "")  # a whole section is unknown
                typo = "Did you mean" in str(exc)  # OmegaConf found a near key: a typo, not another command's recipe
                if other_command and not typo:
                    raise UserError(f"recipe {path}: config key '{exc.full_key}' is not a setting of this command: "
                                    "is it a recipe for another command?") from exc
                raise UserError(f"recipe {path}: {_describe(exc, schema)}") from exc
            except OmegaConfBaseException as exc:  # a value of the wrong type: say which file holds it
                raise UserError(f"recipe {path}: {_describe(exc, schema)}") from exc
        for item in sets or []:
            given = _read_set(item, merged)
            _check_sections(merged, given, f"--set {item}: ")
            try:
                merged = OmegaConf.merge(merged, _strings_as_lists(merged, given))
            except OmegaConfBaseException as exc:
                raise UserError(f"--set {item.strip()}: {_describe(exc, schema)}") from exc
        for key, value in (overrides or {}).items():
            if value is not None:
                if isinstance(value, str) and OmegaConf.is_list(OmegaConf.select(merged, key)):
                    value = [value]  # load_config(..., overrides={"photos": "dog/"}) from Python
                OmegaConf.update(merged, key, literal(value), merge=True)
        obj = OmegaConf.to_object(merged)
    except InterpolationResolutionError as exc:  # only a recipe's texts are read as OmegaConf's
        raise UserError(f"{source}{_describe(exc, schema)}") from exc
    except OmegaConfBaseException as exc:
        raise UserError(_describe(exc, schema)) from exc
    except EmptySetting as exc:  # told as the flag's, the --set's or the recipe's that gave it empty
        told = told_as_given(exc, recipe, sets, overrides, getattr(schema, "SETTINGS_NAME", None))
        raise UserError(_name_flag(str(told), flags or {})) from exc  # a flag's: named
    except UserError as exc:  # a value check in a config's __post_init__
        raise UserError(_name_flag(str(exc), flags or {})) from exc
    _apply_env(obj)
    _locate_train_configs(obj, flags)
    return obj  # type: ignore[return-value]


def told_as_given(exc: EmptySetting, recipe: str | None, sets: list[str] | None, overrides: dict[str, Any] | None,
                  kind: str | None = None) -> UserError:
    """The UserError for the empty setting `exc` as the flag's, the --set's or the recipe's that gave it (`given_by`),
    of `load_config` and of a check made once the config is loaded (a subject's name: `raise told_as_given(...)`)."""
    where = given_by(exc.key, recipe, sets, overrides or {})
    recipe_path = recipe and find_recipe(recipe, kind)
    return UserError(exc.where_empty(where, recipe_path))


def _locate_train_configs(config: Any, flags: dict[str, str] | None, prefix: str = "") -> None:
    """Tell each `TrainConfig` in `config` its key and the command's flags, for the training engine's messages."""
    import dataclasses

    from vidbooth.config.train import TrainConfig

    if not dataclasses.is_dataclass(config):
        return
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, TrainConfig):
            value.locate(prefix + field.name, flags)
        elif dataclasses.is_dataclass(value):
            _locate_train_configs(value, flags, f"{prefix}{field.name}.")


def _name_flag(message: str, flags: dict[str, str]) -> str:
    """`message` with the flag of the key it starts with added after the key ("train.steps (--steps) must ..."),
    unless it names one already."""
    key = message.split(" ", 1)[0]
    if key in flags and not message.startswith(f"{key} ("):
        return f"{key} ({flags[key]}){message[len(key):]}"
    return message


def _read_set(item: str, schema: Any) -> Any:
    """One `--set key=value` as a config. A text setting (a name, a prompt, a path) takes the value as typed, so
    that `name=007` stays '007' and `prompt=off` stays 'off' (`null` still means none where a setting may be none,
    and a quoted text is unquoted); any other value is read as YAML (`true`, `1e-4`, `[a, b]`)."""
    key, equals, text = item.partition("=")
    key = key.strip()
    if not equals or not key:
        raise UserError(f"--set expects key=value, got '{item}'")
    kind = _text_kind(schema, key)
    if not text.strip() and kind not in ("str", "optional str"):  # read as YAML it is null: "Incompatible value"
        raise UserError(f"--set {item} gives no value: write one after '=' (null where a setting may be none)")
    if kind in ("str", "optional str") or (kind == "list" and not text.lstrip().startswith("[")):
        config = OmegaConf.create()
        value = None if text in ("null", "~") and kind != "str" else literal(_unquoted(text))
        OmegaConf.update(config, key, value, force_add=True)
        return config
    try:
        return OmegaConf.from_dotlist([f"{key}={text}"])
    except Exception as exc:  # yaml errors have many types
        reason = yaml_problem(exc)
        hint = "write the value as in YAML, e.g. 1e-4, true or [a, b]"
        raise UserError(f"--set {key}={text} cannot be read ({reason}): {hint}") from exc


def _texts_as_written(schema: Any, loaded: Any, path: Path) -> None:
    """Text settings of recipe `path` as written, as `--set` takes them: YAML reads an unquoted `007` as the number
    7 and `no` as false, which became a motion named '7' and the class noun 'False'."""
    import yaml

    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # OmegaConf read it: nothing to add
        return
    _restore_texts(schema, loaded, root)


def _restore_texts(schema: Any, loaded: Any, node: Any) -> None:
    import yaml
    from omegaconf.nodes import StringNode

    if not (isinstance(node, yaml.MappingNode) and OmegaConf.is_dict(schema) and OmegaConf.is_dict(loaded)):
        return
    for key_node, value_node in node.value:
        key = key_node.value
        if key not in schema or key not in loaded or OmegaConf.is_interpolation(loaded, key):
            continue
        wanted = schema._get_node(key)
        if isinstance(wanted, StringNode) and _plain_non_text(value_node):
            loaded[key] = value_node.value
        elif OmegaConf.is_list(wanted) and wanted._metadata.element_type is str and \
                isinstance(value_node, yaml.SequenceNode) and OmegaConf.is_list(loaded[key]):
            for index, item in enumerate(value_node.value):
                if _plain_non_text(item):
                    loaded[key][index] = item.value
        else:
            _restore_texts(wanted, loaded[key], value_node)


def _plain_non_text(node: Any) -> bool:
    """An unquoted YAML scalar read as a number or true/false (not null: a text setting may be none)."""
    import yaml

    return isinstance(node, yaml.ScalarNode) and node.style is None and node.tag in (
        "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")


def _is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def _unquoted(text: str) -> str:
    """A text setting's value as `--set` gives it: as typed, or what is inside the quotes around it."""
    if not _is_quoted(text):
        return text
    import yaml

    return str(yaml.safe_load(text))


def _text_kind(schema: Any, key: str) -> str | None:
    """'str' when `key` is a text setting of `schema` ('optional str' when it may be none), 'list' when it is a
    list of texts, else None."""
    from omegaconf.nodes import StringNode

    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key, default=None) if parent_key else schema
    if not OmegaConf.is_dict(parent) or leaf not in parent:
        return None
    node = parent._get_node(leaf)
    if isinstance(node, StringNode):
        return "optional str" if node._is_optional() else "str"
    if OmegaConf.is_list(node) and node._metadata.element_type is str:
        return "list"
    return None


def _check_sections(schema: Any, given: Any, where: str, prefix: str = "") -> None:
    """A UserError naming the key where `given` puts a value or nothing in place of a section of settings
    (`sampling: 5`, or `sampling:` with nothing under it), which OmegaConf refuses without naming it ("int is not a
    subclass of SamplingConfig") or unclearly ("field 'sampling' is not Optional")."""
    if not (OmegaConf.is_dict(given) and OmegaConf.is_dict(schema)):
        return
    for key in given:
        if key not in schema or OmegaConf.is_interpolation(given, key):
            continue  # the merge names an unknown key; an interpolation is resolved later
        value, wanted = given._get_node(key), schema._get_node(key)
        if OmegaConf.is_dict(wanted) and not OmegaConf.is_dict(value) and not OmegaConf.is_missing(given, key) \
                and not (value._value() is None and wanted._is_optional()):
            what = "nothing" if value._value() is None else "a value"
            raise UserError(f"{where}config key '{prefix}{key}' is a section of settings, given {what}: give the "
                            f"settings under it (such as {prefix}{key}.{next(iter(wanted), 'key')}), or leave it out")
        if OmegaConf.is_list(wanted) and (OmegaConf.is_dict(value) or _texts_given_lists(wanted, value)):
            # OmegaConf fails with a TypeError (a mapping), or later code does (a list inside a list of texts)
            given_what = "a mapping (or one item set by its number)" if OmegaConf.is_dict(value) else "a list inside it"
            example = f"{key}: [a, b]" if where.startswith("recipe") else f"--set '{prefix}{key}=[a, b]'"
            raise UserError(f"{where}config key '{prefix}{key}' is a list, given {given_what}: give the whole list, "
                            f"such as {example}")
        _check_sections(wanted, value, where, f"{prefix}{key}.")


def _texts_given_lists(wanted: Any, value: Any) -> bool:
    """Whether `value`, given for the list of texts `wanted`, holds a list or mapping among its items."""
    if not (OmegaConf.is_list(value) and wanted._metadata.element_type is str):
        return False
    return any(OmegaConf.is_list(item) or OmegaConf.is_dict(item) for item in value._iter_ex(resolve=False))


def _strings_as_lists(schema: Any, given: Any) -> Any:
    """`given` with a plain string where `schema` holds a list made a one-item list (`photos: ./dog`, `--set
    clips=a.mp4`), at any depth."""
    if OmegaConf.is_dict(given) and OmegaConf.is_dict(schema):
        for key in given:
            if key not in schema or OmegaConf.is_interpolation(given, key):
                continue  # the merge names an unknown key; an interpolation is resolved later
            value, wanted = given[key], schema[key]
            if isinstance(value, str) and OmegaConf.is_list(wanted):
                given[key] = [value]
            else:
                _strings_as_lists(wanted, value)
    return given


def _apply_env(obj: Any) -> None:
    """VIDBOOTH_ATTENTION sets the attention backend when the config leaves it on 'auto'."""
    runtime = getattr(obj, "runtime", None)
    env = os.environ.get("VIDBOOTH_ATTENTION")
    if runtime is not None and env and str(getattr(runtime, "attention", "")).lower() == "auto":
        runtime.attention = env


def literal(value: Any) -> Any:
    """`value` (a text, or a list or dict of them) escaped for OmegaConf so that it stays as typed: a prompt such as
    'a sign reading ${price}' is not an interpolation to resolve (or to fail on). Each `${` gets a backslash, and
    backslashes just before it are doubled, which is how OmegaConf reads them back."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, list | tuple):
        return [literal(item) for item in value]
    if isinstance(value, dict):
        return {key: literal(item) for key, item in value.items()}
    return value


def to_yaml(config: Any) -> str:
    """The config as YAML that loads back to the same values (texts holding '${' escaped)."""
    import dataclasses

    if dataclasses.is_dataclass(config):
        structured = OmegaConf.structured(type(config))
        return OmegaConf.to_yaml(OmegaConf.merge(structured, literal(dataclasses.asdict(config))))
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config (what actually ran) as YAML."""
    path = Path(path)
    path.write_text(to_yaml(config))
    return path
