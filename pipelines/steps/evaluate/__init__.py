"""Step `eval`: every stage checkpoint on the suites that fit it (`eval.suites`: captions after the
first stage, the rest after the last; suites.py), the short-answer accuracy of the last stage on
`eval.split`, and one greedy chat answer about the split's first image: a description, checked when a
describe suite knows the image. Results: `eval/suites.json`, `eval/report.md` with a table per suite
and a chart comparing stages, TensorBoard scalars (report.py), and the run's summary.

Also where a command finds the checkpoint to use and checks that it loads (`checkpoint_to_use`,
`load_checked`), for `vcla chat` and `vcla export` too."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.files import write_json
from common.layout import STAGE_FILE
from pipelines.core.errors import StepFailed
from pipelines.core.step import Step
from pipelines.recipe import Recipe

DESCRIBE = "请详细描述这张图片。"  # one of the demo's LLaVA "detail" prompts


@dataclass(frozen=True)
class EvalOptions:
    checkpoint: str | None = None
    """Evaluate this stage folder instead of the run's last stage; the step is then not marked done."""
    stage: str | None = None
    """Only the suites of this stage, right after it trained (`build-and-train` between stages); not marked
    done, no report: the whole step writes that once every stage has trained."""

    @property
    def partial(self) -> bool:
        return self.checkpoint is not None or self.stage is not None


def checkpoint_to_use(recipe: Recipe, given: str | Path | None) -> Path:
    """`--checkpoint` if given, else the run's last trained stage."""
    folder = Path(given) if given else recipe.run_dir / "train" / list(recipe.stages)[-1]
    if not (folder / STAGE_FILE).is_file():
        raise StepFailed(f"{folder}: no trained stage here; run `vcla train` first or pass --checkpoint DIR")
    return folder


def run(recipe: Recipe, options: EvalOptions) -> dict[str, Any]:
    from training.chat import ChatModel

    out_dir = recipe.run_dir / "eval"
    summary: dict[str, Any] = {}
    bots: dict[str, Any] = {}

    def bot_for(checkpoint: Path) -> Any:
        if str(checkpoint) not in bots:
            bots.clear()  # one model in memory at a time
            bots[str(checkpoint)] = load_checked("eval", checkpoint, ChatModel.load)
        return bots[str(checkpoint)]

    if options.stage is not None:
        return _one_stage(recipe, options, bot_for, out_dir)
    if recipe.eval.suites:
        from pipelines.steps.evaluate.report import write_report
        from pipelines.steps.evaluate.runner import run_suites

        results = run_suites(recipe, options, bot_for, out_dir)
        summary["suites"] = write_report(out_dir, results)
    if recipe.eval.split is None:
        if not recipe.eval.suites:
            print("[eval] eval.split and eval.suites are not set; nothing to evaluate")
            return {"skipped": "eval.split and eval.suites are not set"}
        return summary
    summary.update(_split_and_chat(recipe, checkpoint_to_use(recipe, options.checkpoint), bot_for))
    return summary


def _one_stage(recipe: Recipe, options: EvalOptions, bot_for: Callable[[Path], Any], out_dir: Path) -> dict[str, Any]:
    """The suites of `options.stage` alone, printed as soon as that stage has trained and kept in
    `eval/after-<stage>.json` (the whole step's report follows once every stage has trained)."""
    from pipelines.steps.evaluate.runner import run_suites
    from pipelines.steps.evaluate.suites import main_metric

    if options.stage not in recipe.stages:
        raise StepFailed(f"eval --stage {options.stage}: no such stage in {recipe.file} (stages: {', '.join(recipe.stages)})")
    results = run_suites(recipe, options, bot_for, out_dir)
    for row in results:
        figure = main_metric(row["kind"], row["metrics"]) if "metrics" in row else None
        shown = f"{figure[0]} {figure[1]:.3f}" if figure else row.get("error", "no figure")
        print(f"[eval] after {options.stage}: {row['suite']} {shown}")
    write_json(out_dir / f"after-{options.stage}.json", {"stage": options.stage, "suites": results},
               sort_keys=False, default=str)
    return {"stage": options.stage, "suites": results}


def _split_and_chat(recipe: Recipe, checkpoint: Path, bot_for: Callable[[Path], Any]) -> dict[str, Any]:
    """Exact-match accuracy on `eval.split`, and the greedy description of its first image (checked
    when a describe suite knows that image)."""
    from training.chat import GREEDY, ImageError, chat
    from training.evaluate import evaluate, split_image_path

    recipe.require_files("eval.split")
    split = Path(recipe.eval.split)
    bot = bot_for(checkpoint)
    try:
        metrics = evaluate(checkpoint, split, recipe.eval, out=recipe.run_dir / "eval", bot=bot)
        print(f"[eval] {checkpoint.name}: accuracy {metrics['accuracy']:.3f} on {metrics['n']} questions")
        first = json.loads(split.read_text(encoding="utf-8-sig").splitlines()[0])
        answer, _ = chat(bot, split_image_path(split, first["image"]), DESCRIBE, **GREEDY)
    except (FileNotFoundError, ImageError) as e:  # an image the split names (the model is loaded)
        raise StepFailed(f"eval: {e}; fix eval.split's image paths (relative to the split's folder or the "
                         "one above it) or put the image there") from None
    shown = {"image": first["image"], "question": DESCRIBE, "answer": answer}
    verdict = _describe_verdict(recipe, first["image"], answer)
    if verdict is not None:
        shown["correct"], shown["why"] = verdict
    said = "" if verdict is None else f"  [{'correct' if verdict[0] else 'wrong'}: {verdict[1]}]"
    print(f"[eval] chat about {first['image']}: {DESCRIBE} -> {answer}{said}")
    return {"accuracy": metrics["accuracy"], "n": metrics["n"], "checkpoint": str(checkpoint), "chat": shown}


def _describe_verdict(recipe: Recipe, image: str, answer: str) -> tuple[bool, str] | None:
    """The describe suites' check of `answer`, when one of them knows `image`."""
    from pipelines.demo.describe import check_description

    for suite in recipe.eval.suites.values():
        if suite.kind != "describe" or not Path(suite.path).is_file():
            continue
        for line in Path(suite.path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("image") == image:
                return check_description(answer, row["shapes"])
    return None


def load_checked(command: str, checkpoint: Path, load: Callable[[Path], Any]) -> Any:
    """`load(checkpoint)`, with a checkpoint whose files (or the model folders it names) are gone or
    unsafe reported as StepFailed naming them."""
    from training.checkpoint import UnsafeCheckpointError

    check_checkpoint_chain(command, checkpoint)
    try:
        return load(checkpoint)
    except (FileNotFoundError, UnsafeCheckpointError) as e:
        raise StepFailed(f"{command}: cannot load {checkpoint}: {e}") from None


def check_checkpoint_chain(command: str, checkpoint: Path) -> None:
    """StepFailed naming the first folder a stage folder loads from that is gone: the stages it
    starts from (`stage.json` "init_from", in turn) and their base ("base"), as `load_stage` follows
    them. Reads `stage.json` files only: cheap enough for the pre-flight."""
    from training.checkpoint import read_stage, resolve_stored

    folder = Path(checkpoint)
    for _ in range(64):  # a chain that loops is not followed for ever
        if not (folder / STAGE_FILE).is_file():
            return  # a merged export, or a folder `checkpoint_to_use` already refused
        try:
            meta = read_stage(folder)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise StepFailed(f"{command}: {folder / STAGE_FILE}: not readable ({e}); train that stage again") from None
        key = "init_from" if meta.get("init_from") else "base" if meta.get("base") else None
        if key is None:
            return  # built from the model paths in its config.json: the loader names a missing one
        target = Path(resolve_stored(folder, meta[key]))
        present = (target / STAGE_FILE).is_file() if key == "init_from" else target.is_dir()
        if not present:
            raise StepFailed(
                f"{command}: cannot load {checkpoint}: it builds on {target} ({folder / STAGE_FILE} \"{key}\": "
                f"{meta[key]!r}), which is not there; copy or move the stage folders together with train/base/ "
                "(the whole train/ or run folder: stored paths are relative to it), or pass --checkpoint DIR")
        if key == "base":
            return
        folder = target


STEP = Step("eval", run, output=lambda r: r.run_dir / "eval", section=lambda r: r.eval, upstream="train",
            module=__name__, options=EvalOptions)
