"""Pictures of a curation: histograms (matplotlib, Agg: no display needed) and contact sheets
(Pillow), and `report.md` linking them under the counts table, so a person can see what was cut
before trusting the numbers.

    write_report(folder, ReportData(...))

Every picture is optional: a histogram of nothing or a sheet without rows is not drawn, and
report.md names only what exists.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

THUMB = 96
SHEET_ROWS = 12


@dataclass
class Cluster:
    representative: str
    members: list[tuple[str, int]]
    """(image path, pHash distance to the representative)."""


@dataclass
class ReportData:
    counts_table: str
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    caption_lengths: list[int] = field(default_factory=list)
    languages: Counter = field(default_factory=Counter)
    clip_scores: list[tuple[str, str, float]] = field(default_factory=list)
    """(image path, caption, score)."""
    clusters: list[Cluster] = field(default_factory=list)


def write_report(folder: Path, data: ReportData) -> list[str]:
    """Draw what `data` holds into `folder`; returns the file names written (report.md last)."""
    folder.mkdir(parents=True, exist_ok=True)
    written: list[tuple[str, str]] = []
    widths = [min(w, h) for w, h in data.image_sizes]
    aspects = [max(w, h) / max(1, min(w, h)) for w, h in data.image_sizes]
    for name, title, values, xlabel in (
        ("image_sizes.png", "Image size (shorter side)", widths, "pixels"),
        ("aspect_ratios.png", "Aspect ratio (longer / shorter side)", aspects, "ratio"),
        ("caption_lengths.png", "Caption length", data.caption_lengths, "characters"),
        ("clip_scores.png", "CLIP image-caption score", [s for _, _, s in data.clip_scores], "cosine"),
    ):
        if values:
            _histogram(folder / name, title, values, xlabel)
            written.append((name, title))
    if data.languages:
        _bars(folder / "languages.png", "Detected language", data.languages)
        written.append(("languages.png", "Detected language"))
    if data.clusters:
        _cluster_sheet(folder / "duplicate_clusters.png", data.clusters)
        written.append(("duplicate_clusters.png", "Largest duplicate clusters (representative first, distance under each)"))
    if data.clip_scores:
        ranked = sorted(data.clip_scores, key=lambda x: x[2])
        _pair_sheet(folder / "clip_lowest.png", ranked[:SHEET_ROWS])
        _pair_sheet(folder / "clip_highest.png", ranked[::-1][:SHEET_ROWS])
        written += [("clip_lowest.png", "Lowest-scoring image-caption pairs"),
                    ("clip_highest.png", "Highest-scoring image-caption pairs")]
    lines = ["# Curation report", "", "```", data.counts_table, "```", ""]
    lines += [f"## {title}\n\n![{title}]({name})\n" for name, title in written]
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return [name for name, _ in written] + ["report.md"]


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _histogram(path: Path, title: str, values: list[float], xlabel: str) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(values, bins=min(50, max(5, int(math.sqrt(len(values))))), color="#3a7bd5")
    ax.set_title(f"{title} (n={len(values):,})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _bars(path: Path, title: str, counts: Counter) -> None:
    plt = _figure()
    items = counts.most_common(15)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar([k for k, _ in items], [v for _, v in items], color="#3a7bd5")
    ax.set_title(title)
    ax.set_ylabel("records")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _thumb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            canvas = Image.new("RGB", (THUMB, THUMB), (255, 255, 255))
            canvas.paste(im, ((THUMB - im.width) // 2, (THUMB - im.height) // 2))
            return canvas
    except OSError:
        return Image.new("RGB", (THUMB, THUMB), (200, 0, 0))


def _cluster_sheet(path: Path, clusters: list[Cluster], per_row: int = 8) -> None:
    rows = sorted(clusters, key=lambda c: (-len(c.members), c.representative))[:SHEET_ROWS]
    label = 14
    sheet = Image.new("RGB", (per_row * (THUMB + 4), len(rows) * (THUMB + label + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, cluster in enumerate(rows):
        cells = [(cluster.representative, "rep")] + [(p, f"d={d}") for p, d in cluster.members][: per_row - 1]
        for c, (image, text) in enumerate(cells):
            x, y = c * (THUMB + 4), r * (THUMB + label + 4)
            sheet.paste(_thumb(image), (x, y))
            draw.text((x + 2, y + THUMB + 1), text, fill="black")
    sheet.save(path)


def _pair_sheet(path: Path, pairs: list[tuple[str, str, float]], text_width: int = 520) -> None:
    row_h = THUMB + 4
    sheet = Image.new("RGB", (THUMB + 8 + text_width, max(1, len(pairs)) * row_h), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (image, caption, score) in enumerate(pairs):
        y = r * row_h
        sheet.paste(_thumb(image), (0, y))
        draw.text((THUMB + 8, y + 4), f"{score:.3f}", fill="black")
        draw.text((THUMB + 8, y + 20), caption[:80].encode("ascii", "replace").decode(), fill="black")
    sheet.save(path)
