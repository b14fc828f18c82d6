"""The wheel a user installs holds the whole package: every module, the shipped recipes and nano's weights, and
works from there, outside the source tree; it declares every package vidbooth imports, with floors that
tests/floors.txt pins for `make test-floors`."""

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vidbooth

SOURCE = Path(vidbooth.__file__).parent.parent
LEFT_OUT = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                  "demo", "out", "tests", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not (SOURCE / "pyproject.toml").is_file():
        pytest.skip("vidbooth is installed from a wheel here, not from its source tree")
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "source"  # a copy: the build writes build/ and *.egg-info/ where it runs
    shutil.copytree(SOURCE, tree, symlinks=True, ignore=LEFT_OUT)
    home = {"HOME": str(work), "XDG_CACHE_HOME": str(work / "cache")}  # what the build's tools write stays here
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(work / "dist"), str(tree)], check=True, capture_output=True, timeout=300,
                   env=os.environ | home)
    (built,) = (work / "dist").glob("vidbooth-*.whl")
    return built


def _package_files(folder: Path) -> set[str]:
    """Files under the package folder as the wheel names them (the recipes link followed)."""
    names = set()
    for root, _, files in os.walk(folder, followlinks=True):
        for name in files:
            path = Path(root) / name
            if "__pycache__" not in path.parts:
                names.add(path.relative_to(SOURCE).as_posix())
    return names


def test_the_wheel_holds_every_module_recipe_and_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _package_files(SOURCE / "vidbooth")
    assert {"vidbooth/recipes/nano/generate.yaml", "vidbooth/assets/nano/unet/diffusion_pytorch_model.safetensors",
            "vidbooth/cli/app.py"} <= expected
    assert sorted(expected - names) == []
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    assert "vidbooth = vidbooth.cli.app:run" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert {name.rsplit("/", 1)[-1] for name in names if ".dist-info/licenses/" in name} == {"LICENSE", "NOTICE"}
    (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
    assert "License-Expression: Apache-2.0" in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()


def test_the_installed_wheel_generates_with_a_shipped_recipe(wheel, tmp_path):
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)  # a pure-Python wheel installs by unpacking
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = os.environ | {"PYTHONPATH": str(installed)}
    code = ("import sys, vidbooth; from vidbooth.cli.app import run; "
            "assert vidbooth.__file__.startswith(sys.argv[1]), vidbooth.__file__; sys.argv[1:] = sys.argv[2:]; run()")
    done = subprocess.run([sys.executable, "-c", code, str(installed), "generate", "--recipe", "nano/generate",
                           "--prompt", "a red square moving left", "--frames", "2", "--steps", "1",
                           "--out", "video.gif"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "video.gif").stat().st_size > 0 and (elsewhere / "video.yaml").is_file()


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extras: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """pyproject's dependencies and those of `extras`: name -> version specifiers."""
    import tomllib

    project = tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in extras for r in project["optional-dependencies"][extra]]
    found = {}
    for requirement in requirements:
        name, specifiers = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", requirement).groups()
        found[_normal(name)] = [part.strip() for part in specifiers.split(",") if part.strip()]
    return found


DISTRIBUTIONS = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}
"""The modules whose distribution is not named as they are (any other: its own name)."""


@pytest.mark.parametrize("folder, extras, some", [
    ("vidbooth", ("cuda",), {"torch", "yaml", "cv2", "PIL", "xformers"}),  # the test extra's packages do not count
    ("tests", ("test", "cuda"), {"pytest", "torch", "safetensors"}),
    ("benchmarks", ("cuda",), {"torch", "numpy"}),
])
def test_every_package_imported_is_declared(folder, extras, some):
    """huggingface_hub, tokenizers and yaml had been imported by vidbooth without being declared (each came only
    because transformers, diffusers or omegaconf needed it); a test imported click, which the floors' typer (with its
    own copy of click) and huggingface_hub do not install."""
    import ast

    if not (SOURCE / "pyproject.toml").is_file():
        pytest.skip("vidbooth is installed from a wheel here, not from its source tree")
    files = [f for f in (SOURCE / folder).rglob("*.py") if "coverage_hook" not in f.parts]  # make coverage's own
    imported = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    ours = {"vidbooth", "tests"} | {file.stem for file in files}  # and the modules beside one another
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in ours}
    assert some <= third_party
    declared = _declared(extras=extras)
    assert {name for name in third_party if _normal(DISTRIBUTIONS.get(name, name)) not in declared} == set()


def test_each_floor_is_pinned_for_make_test_floors():
    """`make test-floors` runs the suite on tests/floors.txt: it must pin exactly pyproject's floors (the floors
    had been older than any version tested: typer 0.12, transformers 4.45, torch 2.4 ... failed or crashed)."""
    if not (SOURCE / "pyproject.toml").is_file():
        pytest.skip("vidbooth is installed from a wheel here, not from its source tree")
    floors = {}
    for line in (SOURCE / "tests" / "floors.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            floors[_normal(name)] = version.strip()
    declared = _declared()
    assert all(len(specifiers) == 1 and specifiers[0].startswith(">=") for specifiers in declared.values())
    assert set(floors) == set(declared)
    for name, (specifier,) in declared.items():
        floor, pinned = specifier.removeprefix(">="), floors[name]
        assert _padded(floor) == _padded(pinned), f"{name}: pyproject says >={floor}, tests/floors.txt pins {pinned}"


def _padded(version: str) -> tuple[int, ...]:
    numbers = [int(part) for part in version.split(".")]
    return tuple(numbers + [0] * (6 - len(numbers)))
