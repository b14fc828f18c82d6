"""`vidbooth list`: the subjects and motions in the library."""

from __future__ import annotations

import typer

KINDS = ("subject", "motion")


def _summary(manifest: dict) -> list[str]:
    """name, kind, what it is, base, created; read leniently (a manifest that passed validation may still hold
    nulls where optional details go)."""
    if manifest["kind"] == "subject":
        what = f"{manifest.get('token') or manifest['name']} {manifest.get('class_noun') or ''}".strip()
        if not (manifest.get("paths") or {}).get("identity_adapter"):
            what += " (embedding only)"
    else:
        captions = manifest.get("captions")
        what = manifest.get("class_noun") or (str(captions[0]) if isinstance(captions, list) and captions else "")
        what = what or "(no caption)"
    return [manifest["name"], manifest["kind"], str(what), str(manifest.get("base") or ""),
            str(manifest.get("created") or "")]


def list_library(
    kind: str = typer.Option(
        "all", "--kind", metavar="KIND", help="What to show: subject | motion | all (default all).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the manifests as JSON on stdout."),
) -> None:
    """Show the learned subjects and motions."""
    import json

    from vidbooth.errors import UserError
    from vidbooth.library import library_home, list_artifacts
    from vidbooth.reporting import info, result, table, warn

    if kind not in (*KINDS, "all"):
        raise UserError(f"--kind {kind or repr(kind)} is unknown: use subject, motion or all")
    problems: list[str] = []
    manifests = [m for k in KINDS if kind in (k, "all") for m in list_artifacts(k, problems)]
    for problem in problems:
        warn(f"not listed: {problem}")
    if as_json:
        result(json.dumps(manifests, default=str, indent=2))  # plain: no colour, whatever the terminal
        return
    if not manifests:
        wanted = {"subject": "no subjects", "motion": "no motions", "all": "nothing"}[kind]
        how = {"subject": "train-subject", "motion": "train-motion", "all": "train-subject or train-motion"}[kind]
        info(f"{wanted} in the library {library_home()}: learn one with {how}")
        return
    rows = [_summary(m) for m in manifests]
    table(f"vidbooth library ({library_home()})", ["name", "kind", "what", "base", "created"], rows, to_stdout=True)
