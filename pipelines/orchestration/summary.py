"""The end-of-run summary: one row per step, written to `<run>/summary.json` and printed."""

from __future__ import annotations

from typing import Any

from common.files import write_json
from pipelines.recipe import Recipe


def write_summary(recipe: Recipe, results: dict[str, dict[str, Any]], wall_s: float) -> dict[str, Any]:
    summary = {
        "recipe": recipe.name,
        "run_dir": str(recipe.run_dir),
        "wall_s": round(wall_s, 1),
        "stages": results,  # one entry per step; the key keeps its name (summary.json already written)
        "eval": {k: results.get("eval", {}).get(k) for k in ("accuracy", "n", "chat", "suites")},
    }
    write_json(recipe.run_dir / "summary.json", summary)
    return summary


def _row(name: str, result: dict[str, Any]) -> tuple[str, ...]:
    if "skipped" in result:
        return (name, "-", "-", "-", f"skipped: {result['skipped']}", _secs(result))
    if "read" in result:  # a data step's StepStats
        reasons = ", ".join(f"{k}={v}" for k, v in result.get("rejected", {}).items()) or "-"
        tokens = {k: v for k, v in result.get("extra", {}).items() if "token" in k}
        notes = ", ".join(f"{k}={v}" for k, v in tokens.items())
        return (name, str(result["read"]), str(result["kept"]), reasons, notes, _secs(result))
    if name == "train":
        losses = ", ".join(f"{s}: loss {m['final_loss']:.3f} ({m['steps']} steps)"
                           for s, m in result.items() if isinstance(m, dict) and m.get("final_loss") is not None)
        return (name, "-", "-", "-", losses, _secs(result))
    if name == "eval":
        notes = [f"accuracy {result['accuracy']:.3f}"] if result.get("accuracy") is not None else []
        for suite, stages in (result.get("suites") or {}).items():
            for stage, cell in stages.items():
                notes.append(f"{suite}@{stage} " + (f"{cell['metric']} {cell['value']:.3f}" if "value" in cell
                                                     else "could not run"))
        return (name, str(result.get("n", "-")), "-", "-", ", ".join(notes), _secs(result))
    if name == "demo-data":
        counts = result.get("counts", {})
        notes = "images generated"
        if vision := counts.get("vision_encoder"):
            notes += (f"; vision encoder held-out cell shape {vision.get('heldout_cell_shape_accuracy', 0):.2f},"
                      f" colour {vision.get('heldout_cell_color_accuracy', 0):.2f}")
        return (name, "-", str(counts.get("images", "-")), "-", notes, _secs(result))
    return (name, "-", "-", "-", ", ".join(f"{k}={v}" for k, v in result.items() if k != "wall_s"), _secs(result))


def _secs(result: dict[str, Any]) -> str:
    return f"{result['wall_s']:.1f}" if "wall_s" in result else "cached"


def summary_table(summary: dict[str, Any]) -> str:
    header = ("step", "in", "out", "rejected (by reason)", "notes", "wall s")
    rows = [header] + [_row(name, result) for name, result in summary["stages"].items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    chat = summary["eval"].get("chat")
    if chat:
        verdict = "" if "correct" not in chat else (f"  [{'correct' if chat['correct'] else 'wrong'}: "
                                                   f"{chat.get('why', '')}]")
        lines.append(f"chat ({chat['image']}): {chat['question']} -> {chat['answer']}{verdict}")
    lines.append(f"total wall time {summary['wall_s']:.0f} s; summary in {summary['run_dir']}/summary.json")
    return "\n".join(lines)
