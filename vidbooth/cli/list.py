"""`vidbooth list`: the subjects and motions in the library."""

from __future__ import annotations

import typer

KINDS = ("subject", "motion")


def _summary(manifest: dict) -> list[str]:
    """name, kind, what it is, base, created."""
    if manifest["kind"] == "subject":
        what = f"{manifest.get('token', manifest['name'])} {manifest.get('class_noun', '')}".strip()
        if not manifest.get("paths", {}).get("identity_adapter"):
            what += " (embedding only)"
    else:
        what = manifest.get("class_noun") or ", ".join(manifest.get("captions", [])[:1])
    return [manifest["name"], manifest["kind"], what, str(manifest.get("base", "")), str(manifest.get("created", ""))]


def list_library(
    kind: str = typer.Option("all", "--kind", help="subject | motion | all"),
    as_json: bool = typer.Option(False, "--json", help="Print the manifests as JSON on stdout."),
) -> None:
    """Show the learned subjects and motions."""
    import json

    from vidbooth.errors import UserError
    from vidbooth.library import library_home, list_artifacts
    from vidbooth.reporting import info, stdout_console, table, warn

    if kind not in (*KINDS, "all"):
        raise UserError(f"--kind {kind} is unknown: use subject, motion or all")
    problems: list[str] = []
    manifests = [m for k in KINDS if kind in (k, "all") for m in list_artifacts(k, problems)]
    for problem in problems:
        warn(f"not listed: {problem}")
    if as_json:
        stdout_console.print_json(json.dumps(manifests, default=str))
        return
    if not manifests:
        info(f"the library in {library_home()} is empty: learn a subject (train-subject) or a motion (train-motion)")
        return
    rows = [_summary(m) for m in manifests]
    table(f"vidbooth library ({library_home()})", ["name", "kind", "what", "base", "created"], rows, to_stdout=True)
