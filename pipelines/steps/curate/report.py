"""The curate step's `report/`: its counts table plus the pictures of curators/report.py, from
what the step measured (image facts, duplicate verdicts, languages, caption lengths, CLIP scores)."""

from __future__ import annotations

from pathlib import Path

from curators.report import Cluster, ReportData, write_report
from pipelines.core.stats import StepStats


def write_step_report(folder: Path, verdicts: dict, facts: dict, images: dict, judge, stats: StepStats) -> list[str]:
    clusters: dict[str, list[tuple[str, int]]] = {}
    for path, v in sorted(verdicts.items()):
        if v.representative is not None:
            clusters.setdefault(v.representative, []).append((path, v.distance))
    sizes = [images[p].original or (f.width, f.height) for p, f in facts.items() if f.error is None]
    data = ReportData(
        counts_table=stats.table(),
        image_sizes=sizes,
        caption_lengths=judge.caption_lengths,
        languages=judge.languages,
        clip_scores=judge.clip.scores if judge.clip is not None else [],
        clusters=[Cluster(rep, members) for rep, members in clusters.items()],
    )
    return write_report(folder, data)
