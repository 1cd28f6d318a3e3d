"""What the suites found, for people and tools: `eval/suites.json` (every metric), `eval/report.md` (a
table per suite, the stages side by side, and the reasons of suites that could not run),
`eval/stages.png` (each suite's main figure per stage) and TensorBoard scalars under `eval/tb/`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.files import atomic_open, write_json
from pipelines.steps.evaluate.suites import main_metric


def write_report(out_dir: Path, results: list[dict]) -> dict[str, Any]:
    """Write the four outputs; returns the summary: per suite, per stage, its main figure or error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "suites.json", results)
    summary: dict[str, dict[str, Any]] = {}
    for r in results:
        cell = {"error": r["error"]} if "error" in r else dict(zip(("metric", "value"), main_metric(r["kind"], r["metrics"]) or ()))
        summary.setdefault(r["suite"], {})[r["stage"]] = cell
    _chart(out_dir / "stages.png", results)
    _tensorboard(out_dir / "tb", results)
    with atomic_open(out_dir / "report.md", "w", encoding="utf-8") as f:
        f.write(_markdown(results))
    return summary


def _markdown(results: list[dict]) -> str:
    lines = ["# Evaluation", "", "![main figure per suite and stage](stages.png)", ""]
    for suite in dict.fromkeys(r["suite"] for r in results):
        rows = [r for r in results if r["suite"] == suite]
        lines += [f"## {suite} ({rows[0]['kind']}: `{rows[0]['path']}`)", ""]
        keys = sorted({k for r in rows for k, v in r.get("metrics", {}).items() if isinstance(v, (int, float))})
        lines += ["| stage | " + " | ".join(keys) + " | seconds |", "|---" * (len(keys) + 2) + "|"]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['stage']} | could not run: {r['error']} |" + " |" * len(keys))
                continue
            cells = [_fmt(r["metrics"].get(k)) for k in keys]
            lines.append(f"| {r['stage']} | " + " | ".join(cells) + f" | {r['seconds']} |")
        for r in rows:
            for group in ("by_category", "by_question_type", "by_answer_type"):
                table = r.get("metrics", {}).get(group)
                if isinstance(table, dict) and table:
                    lines += ["", f"{r['stage']}, {group.replace('_', ' ')}:", "",
                              "| | " + " | ".join(sorted({k for v in table.values() for k in v})) + " |"]
                    cols = sorted({k for v in table.values() for k in v})
                    lines.append("|---" * (len(cols) + 1) + "|")
                    lines += [f"| {name} | " + " | ".join(_fmt(v.get(c)) for c in cols) + " |" for name, v in table.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))


def _chart(path: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{r['suite']}\n{main_metric(r['kind'], r['metrics'])[0]}", r["stage"],
             main_metric(r["kind"], r["metrics"])[1]) for r in results if "metrics" in r and main_metric(r["kind"], r["metrics"])]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(bars)), 3.5), dpi=100)
    stages = list(dict.fromkeys(b[1] for b in bars))
    colors = ["#3a7bd5", "#e07b39", "#4caf50", "#9c27b0"]
    for i, (label, stage, value) in enumerate(bars):
        ax.bar(i, value, color=colors[stages.index(stage) % len(colors)], label=stage)
        ax.text(i, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(bars)), [b[0] for b in bars], fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(), fontsize=8)
    ax.set_title("Evaluation: each suite's main figure per stage")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _tensorboard(folder: Path, results: list[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as tb:
        for step, stage in enumerate(dict.fromkeys(r["stage"] for r in results)):
            for r in results:
                if r["stage"] == stage and "metrics" in r:
                    for key, value in r["metrics"].items():
                        if isinstance(value, (int, float)):
                            tb.add_scalar(f"eval/{r['suite']}/{key}", float(value), step)
