"""Results of `vidbooth evaluate`: per-video scores, means, and how they were measured; table, JSON and CSV."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vidbooth import reporting
from vidbooth.fileio import write_together

METRIC_LABELS = {
    "clip_t": "CLIP-T",
    "nano_t": "nano-T",
    "clip_i": "CLIP-I",
    "nano_i": "nano-I",
    "dino_i": "DINO-I",
    "t_cons": "T.Cons",
    "nano_t_cons": "nano T.Cons",
    "motion_fidelity": "motion fid.",  # beside "probe motion", which is another score
    "probe_colour": "probe colour",
    "probe_shape": "probe shape",
    "probe_motion": "probe motion",
}
"""Metric name (JSON and CSV key) -> table label. With `--clip-model nano` the image-tower metrics are the nano_*
ones, so nothing measured by nano's towers is labelled CLIP."""
METRICS = tuple(METRIC_LABELS)


@dataclass
class VideoResult:
    video: str
    source: str | None = None
    prompt: str | None = None
    reference_images: str | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    """Requested metrics; None where the metric is unavailable or undefined (T.Cons/motion of a 1-frame video)."""
    error: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    """Why a metric of this video has no value when the reason is the video's own (a prompt that is not a world
    caption for the probe metrics)."""
    reference_colour: str | None = None
    """The colour the world probe reads in the reference images, when the prompt names none: probe colour compares
    the video's colour with it."""


@dataclass
class EvaluationReport:
    results: list[VideoResult]
    unavailable: dict[str, str]
    """Metric -> why it could not be computed and how to make it available."""
    models: dict[str, dict[str, Any]]
    reference_motion: list[str]
    versions: dict[str, str]

    @property
    def failed(self) -> list[VideoResult]:
        return [result for result in self.results if result.error]

    @property
    def metric_names(self) -> list[str]:
        """Every metric requested for at least one video, in the canonical order."""
        return [name for name in METRICS if any(name in result.metrics for result in self.results)]

    def aggregate(self) -> dict[str, dict[str, float | int | None]]:
        """Mean of each metric over the videos that have a value for it."""
        summary = {}
        for name in self.metric_names:
            values = [r.metrics[name] for r in self.results if r.metrics.get(name) is not None]
            summary[name] = {"mean": sum(values) / len(values) if values else None, "count": len(values)}
        return summary

    def to_dict(self) -> dict[str, Any]:
        return {
            "videos": [asdict(result) for result in self.results],
            "aggregate": self.aggregate(),
            "unavailable": self.unavailable,
            "failed": len(self.failed),
            "models": self.models,
            "reference_motion": self.reference_motion,
            "versions": self.versions,
        }


def show(report: EvaluationReport, table_to_stdout: bool = True) -> None:
    """The results table on stdout (on stderr where stdout holds the JSON or CSV: `--json -`); unavailable metrics
    as warnings and failures as errors on stderr."""
    names = report.metric_names
    rows = [[result.video or result.source, *_cells(result, names)] for result in report.results]
    means = report.aggregate()
    rows.append(["mean", *[_cell(means[name]["mean"]) for name in names]])
    if names:  # none when every video failed before scoring: the errors below say it all
        reporting.table("vidbooth evaluate", ["video", *[METRIC_LABELS[name] for name in names]], rows,
                        to_stdout=table_to_stdout)
    for reason in dict.fromkeys(report.unavailable.values()):
        labels = ", ".join(METRIC_LABELS[name] for name, why in report.unavailable.items() if why == reason)
        reporting.warn(f"{labels} unavailable: {reason}")
    colours: dict[tuple[str, str], list[str]] = {}  # (reference folder, its colour) -> videos scored against it
    for result in report.results:
        if result.reference_colour and not result.error:
            key = (result.reference_images, result.reference_colour)
            colours.setdefault(key, []).append(result.video or result.source)
    for (folder, colour), videos in colours.items():
        whose = f"{videos[0]}, whose prompt names" if len(videos) == 1 else f"{len(videos)} videos whose prompts name"
        reporting.info(f"probe colour of {whose} no colour: against {colour}, the colour of the reference images "
                       f"{folder}")
    for result in report.results:
        for note in dict.fromkeys(result.notes.values()):
            reporting.warn(f"{result.video or result.source}: {note}")
    for result in report.failed:
        reporting.error(result.error)


def _cells(result: VideoResult, names: list[str]) -> list[object]:
    if result.error:
        return ["failed", *[""] * (len(names) - 1)] if names else []
    return [_cell(result.metrics.get(name)) for name in names]  # n/a also where this video's job had none


def _cell(value: float | None) -> object:
    return "n/a" if value is None else value


TO_STDOUT = "-"
"""`--json -` / `--csv -`: the report on stdout, for a script to read, instead of a file."""


def write_reports(report: EvaluationReport, json_path: str | Path | None = None,
                  csv_path: str | Path | None = None) -> list[Path]:
    """Write the JSON and/or CSV report together: both are written to temporary files first, then renamed into
    place, so a failure or Ctrl-C leaves the previous pair as it was (never a new JSON beside an old CSV). One given
    as TO_STDOUT is not written here: `print_report` prints it."""
    texts = []
    if json_path and str(json_path) != TO_STDOUT:
        texts.append((Path(json_path), _json_text(report)))
    if csv_path and str(csv_path) != TO_STDOUT:
        texts.append((Path(csv_path), _csv_text(report)))
    write_together(
        [(path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8", newline="")) for path, text in texts]
    )
    return [path for path, _ in texts]


def print_report(report: EvaluationReport, json_path: str | Path | None, csv_path: str | Path | None) -> None:
    """The JSON or CSV report on stdout where its flag is TO_STDOUT."""
    if str(json_path) == TO_STDOUT:
        reporting.result(_json_text(report).rstrip("\n"))
    elif str(csv_path) == TO_STDOUT:
        reporting.result(_csv_text(report).rstrip("\r\n"))


def _json_text(report: EvaluationReport) -> str:
    return json.dumps(report.to_dict(), indent=2) + "\n"


_CSV_FIELDS = ("video", "source", "prompt", "reference_images", "reference_colour")


def _csv_text(report: EvaluationReport) -> str:
    """One row per video; empty cells where a metric has no value, and the notes saying why, joined by '; '."""
    columns = [*_CSV_FIELDS, *report.metric_names, "notes", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for result in report.results:
        row = {key: getattr(result, key) for key in (*_CSV_FIELDS, "error")}
        row["notes"] = "; ".join(dict.fromkeys(result.notes.values())) or None
        writer.writerow(row | {name: result.metrics.get(name) for name in report.metric_names})
    return buffer.getvalue()
