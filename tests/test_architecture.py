"""The layering docs/architecture.md states, read from the source: who imports whom, and who prints."""

import ast
import os
import re
from pathlib import Path

import pytest

import vidbooth

PACKAGE = Path(vidbooth.__file__).parent
LEAVES = ("adapters", "attention", "data")
LEAF_MAY_USE = {"errors", "fileio", "reporting", "words", "__version__"}
"""All that the leaf layers use of vidbooth: errors, atomic writes, the reporting layer, prompts' words as the tokenizer
reads them, and the version."""


def _modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(PACKAGE.parent)): ast.parse(path.read_text()) for path in PACKAGE.rglob("*.py")}


def _layer(path: str) -> str:
    """'vidbooth/engine/generate.py' -> 'engine'; 'vidbooth/library.py' -> 'library'."""
    return Path(path).parts[1].removesuffix(".py")


def _imported_layers(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module == "vidbooth" and node.level == 0:
            names.update(f"vidbooth.{alias.name}" for alias in node.names)  # from vidbooth import reporting
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name.split(".")[1] for name in names if name.startswith("vidbooth.")}


MODULES = _modules()


def test_the_walk_finds_the_package():
    layers = {_layer(path) for path in MODULES}
    assert {"cli", "config", "engine", "adapters", "attention", "data", "eval", "nano", "reporting"} <= layers
    assert "engine" in _imported_layers(MODULES["vidbooth/cli/generate.py"])  # the reader sees lazy imports too
    assert "reporting" in _imported_layers(MODULES["vidbooth/data/images.py"])  # and `from vidbooth import x`


def _import_breaches(path: str) -> list[str]:
    layer, imported = _layer(path), _imported_layers(MODULES[path]) - {_layer(path)}
    breaches = []
    if layer not in ("cli", "__main__") and "cli" in imported:
        breaches.append("imports cli")
    if layer in (*LEAVES, "eval") and "engine" in imported:
        breaches.append("imports engine")
    if layer in LEAVES and not imported <= LEAF_MAY_USE:
        breaches.append(f"imports {sorted(imported - LEAF_MAY_USE)}")
    return [f"{path} {breach}" for breach in breaches]


def test_imports_flow_one_way():
    assert [breach for path in sorted(MODULES) for breach in _import_breaches(path)] == []


def test_only_reporting_prints():
    printing = []
    for path, tree in sorted(MODULES.items()):
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
        lines = [call.lineno for call in calls if isinstance(call.func, ast.Name) and call.func.id == "print"]
        if lines and path != "vidbooth/reporting.py":
            printing.append(f"{path}:{lines}")
    assert printing == [], "print() outside vidbooth/reporting.py"


# The docs, read against the command line: every command has a reference page in README's docs index, the page
# names each of the command's flags, and every link between the pages leads to a file and heading that exist.

ROOT = PACKAGE.parent
COMMAND_PAGES = {
    "generate": "generate.md",
    "evaluate": "evaluate.md",
    "train-motion": "motion.md",
    "motion-adapter": "motion.md",
    "train-subject": "subject.md",
    "textual-inversion": "subject.md",
    "identity-adapter": "subject.md",
    "list": "list.md",
    "pretrain": "pretrain.md",
    "demo": "demo.md",
    "train-image-prompt": "image-prompt.md",
}
def _commands() -> dict:
    import typer

    from vidbooth.cli.app import app

    return typer.main.get_command(app).commands


def _links(page: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _without_code(page.read_text()))


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", _without_code(page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_command_has_a_page_in_the_readme_index():
    assert sorted(_commands()) == sorted(COMMAND_PAGES), "a new command needs a docs page in COMMAND_PAGES"
    indexed = {Path(link).name for link in _links(ROOT / "README.md") if link.startswith("docs/")}
    assert sorted(set(COMMAND_PAGES.values()) - indexed) == []


def test_every_flag_is_named_on_its_commands_page():
    missing = []
    for name, command in sorted(_commands().items()):
        page = (ROOT / "docs" / COMMAND_PAGES[name]).read_text()
        flags = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
        # the whole flag: `--motion` is not named by `--motion-scale`
        unnamed = {flag for flag in flags if not re.search(rf"(`|, ){re.escape(flag)}(?![\w-])", page)}
        missing += [f"{name} {flag}" for flag in sorted(unnamed)]
    assert missing == [], f"flags that their command's docs page does not name: {missing}"


def test_doc_links_lead_to_files_and_headings_that_exist():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in _links(page):
            if "://" in link or link.startswith("mailto:"):
                continue
            file, _, anchor = link.partition("#")
            target = page.parent / file if file else page
            if not target.exists() or (anchor and target.suffix == ".md" and anchor not in _anchors(target)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []


def _command_lines(text: str) -> list[str]:
    """Lines of fenced blocks that run a command, and inline code spans that pass a flag."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    lines = [line for block in fenced for line in block.splitlines()]
    commands = [line for line in lines if re.match(r"\s*(vidbooth|accelerate|python)\b", line)]
    spans = re.findall(r"`([^`\n]+)`", _without_code(text))
    return commands + [span for span in spans if " --" in span]


def test_doc_commands_quote_the_subject_name():
    """An unquoted S* is a file pattern to the shell: `--name S*` next to a Screenshot.png becomes that file's
    name, and zsh refuses it ('no matches found')."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    unquoted = []
    for page in pages:
        for line in _command_lines(page.read_text()):
            bare = re.sub(r"'[^']*'|\"[^\"]*\"", "''", line)
            if re.search(r"(?<![\w'\"])\S*\*", bare.split("#")[0]):
                unquoted.append(f"{page.relative_to(ROOT)}: {line.strip()}")
    assert unquoted == []


_BAD_SETTINGS = [  # (command line, what its one error line says)
    (["generate", "--prompt", "x", "--num-frames", "0"], "sampling.num_frames (--num-frames) must be at least 1"),
    (["generate", "--prompt", "x", "--scheduler", "euler"], "unknown scheduler 'euler'"),
    (["generate", "--prompt", "x", "--subject", "nosuch"], "unknown subject 'nosuch'"),
    (["generate", "--prompt", "a sprite", "--image-prompt", "missing.png"],
     "--image-prompt: image not found: missing.png: check the spelling"),
    (["train-subject", "photos", "--name", "S*", "--class-noun", "dog", "--set", "bogus=1"], "config key 'bogus'"),
    (["textual-inversion", "photos", "--name", "S*", "--class-noun", "dog", "--set", "bogus=1"], "config key 'bogus'"),
    (["identity-adapter", "photos", "--name", "S*", "--set", "bogus=1"], "config key 'bogus'"),
    (["train-subject", "no-such-photos", "--name", "S*", "--class-noun", "dog"], "photo path not found: no-such"),
    (["textual-inversion", "no-such-photos", "--name", "S*", "--class-noun", "dog"], "photo path not found"),
    (["identity-adapter", "no-such-photos", "--name", "S*"], "photo path not found"),
    (["identity-adapter", "--name", "nosuch"], "unknown subject 'nosuch'"),
    (["train-motion", "clip.mp4", "--name", "M", "--set", "bogus=1"], "config key 'bogus'"),
    (["train-motion", "no-such-clip.mp4", "--name", "M"], "clip not found: no-such-clip.mp4: check the spelling"),
    (["train-image-prompt", "--set", "bogus=1"], "config key 'bogus'"),
    (["train-image-prompt", "--data", "no-such-folder"], "--data no-such-folder: not found"),
    (["evaluate", "out.mp4", "--set", "bogus=1"], "config key 'bogus'"),
    (["demo", "--set", "bogus=1"], "config key 'bogus'"),
    (["pretrain", "--set", "bogus=1"], "config key 'bogus'"),
    (["pretrain", "--set", "arch.unet.position_channels=2"], "arch.unet.position_channels must be 0 or 3, got 2"),
    (["pretrain", "--resume", "--out", "no-run"], "nothing to resume in no-run: run without --resume to start"),
    (["generate", "--prompt", "x", "--base", "./no/such"], "base model not found: ./no/such (--base)"),
    (["generate", "--prompt", "x", "--recipe", "tiny/generate", "--set", "backbone.base=a/b/c"],
     "base model not found: a/b/c (--base)"),
    (["demo", "--base", "no/such/base"], "base model not found: no/such/base (--base)"),
]


def test_a_bad_setting_is_told_before_torch_is_imported(tmp_path):
    """A typo in a flag, a --set or a name is one line in a fraction of a second: the engine (torch, diffusers: 2-3
    s of imports) is imported only once the settings are read and checked."""
    import json
    import subprocess
    import sys

    script = (
        "import json, sys\nfrom vidbooth.cli.app import main\nfor case in json.loads(sys.argv[1]):\n"
        "    code = main(case)\n    print(case[0], code, 'torch' in sys.modules, flush=True)\n"
        "    print('end of case', file=sys.stderr, flush=True)\n"
    )
    env = dict(os.environ, VIDBOOTH_HOME=str(tmp_path / "home"), VIDBOOTH_CACHE=str(tmp_path / "cache"))
    cases = [argv for argv, _ in _BAD_SETTINGS]
    run = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                         env=env, cwd=tmp_path, timeout=300)
    assert run.stdout.splitlines() == [f"{argv[0]} 2 False" for argv in cases], run.stderr
    errors = run.stderr.split("end of case\n")[:-1]
    for (argv, message), error in zip(_BAD_SETTINGS, errors, strict=True):
        assert error.startswith("error: ") and error.count("\n") == 1 and message in error, (argv, error)


def test_shell_completion_offers_commands_flags_and_library_names(tmp_path, isolated_home, monkeypatch):
    """`vidbooth --install-completion` installs what these answer: the shell asks the command itself."""
    import shlex
    import subprocess
    import sys

    from vidbooth import library

    with library.staged_artifact("subject", "S*") as stage:
        library.write_json(stage / library.MANIFEST, {"name": "S*", "kind": "subject", "schema_version": 1,
                                                      "files": {}})

    def complete(words: str) -> list[str]:
        env = dict(os.environ, _VIDBOOTH_COMPLETE="complete_bash", COMP_WORDS=words,
                   COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)))
        done = subprocess.run([command], env=env, capture_output=True, text=True, timeout=60)
        return done.stdout.split()

    command = Path(sys.executable).parent / ("vidbooth.exe" if os.name == "nt" else "vidbooth")  # the name completed
    if not command.exists():
        pytest.skip("no vidbooth command beside this Python (installed with pip install -e .)")

    assert complete("vidbooth gen") == ["generate"]
    assert set(complete("vidbooth generate --num")) == {"--num-videos", "--num-frames", "--num-inference-steps"}
    assert complete("vidbooth generate --subject ") == ["S*"]
    assert complete("vidbooth evaluate out.mp4 --motion ") == []  # no motions yet
    assert complete("vidbooth identity-adapter --name ") == ["S*"]
    other = tmp_path / "other library"
    with monkeypatch.context() as env:
        env.setenv("VIDBOOTH_HOME", str(other))
        with library.staged_artifact("subject", "dog") as stage:
            library.write_json(stage / library.MANIFEST, {"name": "dog", "kind": "subject", "schema_version": 1,
                                                          "files": {}})
    assert complete(f"vidbooth --home {shlex.quote(str(other))} generate --subject ") == ["dog"]  # not S*'s
