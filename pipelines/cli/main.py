"""`vcla`: the command line. One subcommand per step, plus the one-shot `build-and-train`.

Exit codes: 0 success, 1 a step failed, 2 bad command line or recipe. A user error (bad recipe or
argument, a failed step) ends the output with one line saying what, where and what to do, and no
traceback; Prefect's run logs carry the message once more (the failed task's state line, or the
flow's exception line: `_UserErrorLines`). `--debug` shows the tracebacks and every Prefect line.
Any other exception is a bug and keeps its traceback and all of Prefect's lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pipelines.cli.commands import chat_command, export_command, webui_command
from pipelines.cli.preflight import preflight
from pipelines.core.errors import StepFailed, UsageError
from pipelines.orchestration import server
from pipelines.orchestration.registry import STEPS
from pipelines.recipe import DEFAULT_RECIPE, Recipe, RecipeError, load_recipe
from llm.errors import EndpointError

USAGE_ERRORS = (RecipeError, UsageError)
"""Bad recipe or command line: exit 2."""
STEP_ERRORS = (StepFailed, EndpointError, server.ServerStartError)
"""A step could not finish (its message says where and why): exit 1."""
FLOW_RUNS, TASK_RUNS = "prefect.flow_runs", "prefect.task_runs"
PREFECT_RUN_LOGGERS = (FLOW_RUNS, TASK_RUNS)
DEBUG_HELP = "show the traceback of an error too (by default a user error is one line)"

EXAMPLES = """\
examples:
  vcla build-and-train                              # the bundled demo, offline
  vcla demo-data /tmp/shapes --num-images 600
  vcla translate --recipe recipes/visualcla-7b.yaml --set translator.concurrency=64
  vcla train --recipe visualcla-7b --set model.llm.path=/models/chinese-alpaca-plus-7b
  vcla webui                                        # chat with the demo's model, browse its data
"""


def _common(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("recipe options")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, metavar="PATH",
                   help=f"recipe YAML, or the name of a bundled one (default: {DEFAULT_RECIPE})")
    g.add_argument("--run-dir", type=Path, default=None, metavar="DIR",
                   help="work folder of the run (default: runs/<recipe name>/)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set stages.stage1.epochs=2 (repeatable; YAML values)")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)


def _add(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=f"{summary}\n\n{description}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vcla", description="Build Chinese multimodal instruction data and train VisualCLA-style models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    p = _add(sub, "demo-data", "Generate the synthetic shapes corpus (deterministic from a seed).",
             "Writes images, an img2dataset URL list, VQAv2-layout questions, LLaVA json, Chinese Alpaca\n"
             "text, a held-out evaluation split and a translation memory covering every English segment.\n"
             "Without DIR, writes to the recipe's demo.output_dir. An up-to-date corpus is left as it is.")
    p.add_argument("dir", nargs="?", type=Path, help="output folder (default: the recipe's demo.output_dir)")
    p.add_argument("--num-images", type=int, default=None, help="images in all, held-out included (default 3000)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--heldout-fraction", type=float, default=None, help="share of images held out (default 0.1)")

    _add(sub, "download", "Read the recipe's sources and fetch every image once with img2dataset.",
         "Writes runs/<name>/download/: records joined to local images, rejected/, stats.json.")
    _add(sub, "curate", "Drop duplicate and junk image-text records before translation: exact and near-duplicate "
         "images, size and aspect bounds, caption rules and language, CLIP similarity.",
         "Writes runs/<name>/curate/: the kept records, rejected/ with each drop's figures, report/ with\n"
         "histograms and contact sheets. Without a `curate:` section it passes the records through.")
    p = _add(sub, "generate", "Generate Chinese conversation / detail / reasoning records from each image's "
             "captions, boxes, QA (and the image) through an OpenAI-compatible model.",
             "Uses the response cache first; only misses are sent. Writes runs/<name>/generate/: the download\n"
             "records passed through plus the generated ones, rejected/. Without a `generate:` section in the\n"
             "recipe it only passes the records through.")
    p.add_argument("--estimate", action="store_true", help="send nothing; print requests, tokens, cache hits, "
                   "cost at the recipe's prices and time at its rate limits")
    p = _add(sub, "translate", "Translate English records into Chinese through an OpenAI-compatible endpoint.",
             "Uses the translation memory first; only misses are sent. Writes runs/<name>/translate/.")
    p.add_argument("--estimate", action="store_true", help="send nothing; print requests, tokens, memory hits, "
                   "cost at the recipe's prices and time at its rate limits")
    _add(sub, "render", "Render records into Alpaca-style templates and write Parquet shards.",
         "Writes runs/<name>/render/: data/*.parquet, manifest.json, a Hub dataset card, rejected/.")
    p = _add(sub, "publish", "Upload the shard folder to a Hugging Face Hub dataset repo.",
             "The token is read from the environment variable named by publish.token_env.")
    p.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    p = _add(sub, "train", "Train the recipe's stages (stage 1 captioning, stage 2 instructions) with LoRA.",
             "Checkpoints go to runs/<name>/train/<stage>/ in the VisualCLA release layout (safetensors).")
    p.add_argument("--stage", default=None, help="train only this stage (default: all, in order)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of the stage even if the recipe changed since (without it, a rerun resumes only from checkpoints of the same model, stage config, seed and shards)")
    _add(sub, "build-and-train", "Run every step in order: demo data, download, curate, generate, translate, render, "
         "train, eval.",
         "With no arguments, runs the bundled demo recipe fully offline and prints a summary table.")
    p = _add(sub, "chat", "Chat with a checkpoint about one or more images (multi-turn).",
             "Uses the VisualCLA generation defaults (top_p 0.9, top_k 40, temperature 0.5, ...).")
    p.add_argument("--checkpoint", type=Path, help="stage folder (default: the run's last stage)")
    p.add_argument("--image", type=Path, action="append", metavar="PATH",
                   help="image file; repeat it for several, which go into the first message in order")
    p.add_argument("--text", help="one message; without it, an interactive session (a line `/image PATH ...` "
                   "attaches images to the next message)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (plain argmax, as a llava-hf export's "
                   "generate(do_sample=False)): the same answer every time")
    p.add_argument("--seed", type=int, default=None, help="seed the sampling, so a rerun gives the same answers")
    p.add_argument("--short", action="store_true", help="ask for a short answer: append the VQA hint the "
                   "checkpoint was trained with (its stage.json `prompt`, the recipe's render.vqa_hint), as `vcla eval` does")
    p = _add(sub, "eval", "Score short answers on a VQA-style split (exact match after normalisation).",
             "Writes the accuracy into runs/<name>/summary.json.")
    p.add_argument("--checkpoint", type=Path, help="stage folder (default: the run's last stage)")
    p = _add(sub, "export", "Export a checkpoint: LoRA merged (VisualCLA-style merged layout) or as a llava-hf model.",
             "merged: README, Training, \"Export merged\" (what differs from VisualCLA's own release).\n"
             "llava-hf works for linear and mlp2x_gelu connectors (README, Training, \"Export llava-hf\").")
    p.add_argument("--checkpoint", type=Path, help="stage folder (default: the run's last stage)")
    p.add_argument("--format", choices=["merged", "llava-hf"], default="merged")
    p.add_argument("--out", type=Path, help="output folder (default: runs/<name>/export/<stage>-<format>)")
    p = _add(sub, "webui", "A web page to chat with a checkpoint and browse the run's data (Gradio).",
             "Chat tab: image upload or webcam, streamed answers, generation settings, the run's held-out\n"
             "images as examples. Data tab: the rendered shards page by page with filters, the rejected rows\n"
             "of each step, the curation report. Listens on 127.0.0.1 only unless --host and --auth-env say\n"
             "otherwise; makes no public link unless --share.")
    p.add_argument("--checkpoint", type=Path, help="stage folder (default: the run's last stage, if trained)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                   "only; any other needs --auth-env)")
    p.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    p.add_argument("--auth-env", default=None, metavar="VAR", help="name of an environment variable holding "
                   "user:password for a login page (never the password itself on the command line)")
    p.add_argument("--share", action="store_true", help="also make a public gradio.live link (needs --auth-env)")
    p.add_argument("--lang", choices=["zh", "en"], default="zh", help="page language (default zh)")
    _add(sub, "serve", "Serve the recipe's schedules as Prefect deployments (runs until stopped).",
         "Each entry of the recipe's `schedules:` becomes a deployment with its cron or interval.")
    return parser


def _demo_data(args: argparse.Namespace) -> int:
    from pipelines.demo.corpus import generate_demo
    from pipelines.recipe import DemoConfig

    recipe = _load(args)
    if args.dir is None and recipe.demo is None:
        raise RecipeError(f"{recipe.file}: demo: this recipe has no demo section; pass an output DIR")
    flags = {"num_images": args.num_images, "seed": args.seed, "heldout_fraction": args.heldout_fraction}
    base = recipe.demo or DemoConfig()
    try:
        settings = DemoConfig.model_validate(base.model_dump() | {k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        raise RecipeError(f"demo-data: {e.errors()[0]['loc'][0]}: {e.errors()[0]['msg']}") from None
    out = args.dir or Path(base.output_dir)
    manifest = generate_demo(out, settings, recipe.generate)
    counts = ", ".join(f"{k}={v}" for k, v in manifest["counts"].items())
    print(f"demo corpus in {out}: {counts}")
    return 0


def _load(args: argparse.Namespace) -> Recipe:
    return load_recipe(args.recipe, args.overrides, args.run_dir)


def _spec(args: argparse.Namespace) -> dict:
    _load(args)  # validate before Prefect starts, so recipe errors are quick and exit 2
    return {"recipe": str(args.recipe), "overrides": args.overrides,
            "run_dir": str(args.run_dir) if args.run_dir else None}


def _options(args: argparse.Namespace) -> dict:
    skip = {"recipe", "overrides", "run_dir", "dir", "debug"}
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in skip}


def _step_command(name: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from pipelines.orchestration.flows import STEP_FLOWS, with_runner

        if name == "train" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return _train_under_launcher(args)
        spec = _spec(args)
        server.ensure_api()  # the configured Prefect API, or a temporary server that dies with vcla
        with_runner(STEP_FLOWS[name], spec)(**spec, options=_options(args))
        return 0
    return run


def _train_under_launcher(args: argparse.Namespace) -> int:
    """Under `torchrun` / `accelerate launch` every rank runs the train step itself, without the
    Prefect flow: N flows would each start a server and race to set the run folder aside. The
    launcher orchestrates; `training/` is rank-aware (rank 0 writes, all ranks train). A later
    single-process `vcla train` or `build-and-train` finds the stages trained and marks them done."""
    step = STEPS["train"]
    step.run(_load(args), step.make_options(vars(args)))
    return 0


def _direct_command(command: Callable[[Recipe, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        command(_load(args), args)
        return 0
    return run


def _build_and_train(args: argparse.Namespace) -> int:
    from pipelines.orchestration.flows import build_and_train, with_runner

    spec = _spec(args)
    server.ensure_api()
    with_runner(build_and_train, spec)(**spec)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from pipelines.orchestration.schedules import serve

    serve(_load(args), _spec(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    server.quiet_telemetry()  # before Prefect is imported
    args = build_parser().parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "demo-data": _demo_data, "build-and-train": _build_and_train, "serve": _serve,
        "chat": _direct_command(chat_command), "export": _direct_command(export_command),
        "webui": _direct_command(webui_command),
    }
    handler = handlers.get(args.command) or _step_command(args.command)
    hide_user_errors(not args.debug)
    try:
        preflight(args.command, _load(args), args)  # files, keys, images: before any server or model
        return handler(args)
    except USAGE_ERRORS as e:
        return _report(args, e, 2)
    except STEP_ERRORS as e:
        return _report(args, e, 1)


class _UserErrorLines(logging.Filter):
    """Prefect logs a failed run three times, each with the error's message: the task's final state,
    the flow's exception (with its traceback) and the flow's final state. For a user error `vcla`
    prints the message last, so Prefect's lines keep it once: the first line that carries it stays
    (a traceback dropped), the flow's exception record is dropped when a task's state line had it
    already, and the flow's final state line names the error's type only. Records of any other
    exception are a bug's and pass untouched: every state line, every traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._task_lines: deque[str] = deque(maxlen=16)
        """Recent ERROR lines of task runs: a failed task's state line, with its error's message."""
        self._flow_errors: deque[tuple[str, str]] = deque(maxlen=16)
        """(message as a state line shows it, type name) of user errors whose flow state line is to come."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        user_error = isinstance(error, USAGE_ERRORS + STEP_ERRORS)
        if user_error:
            record.exc_info, record.exc_text = None, None
        if record.name == TASK_RUNS:
            if record.levelno >= logging.ERROR:
                self._task_lines.append(record.getMessage())
            return True
        if user_error:  # the flow's "Encountered exception during execution"
            shown = _as_in_state(error)
            self._flow_errors.append((shown, type(error).__name__))
            return not any(shown in line for line in self._task_lines)
        message = record.getMessage()
        for shown, name in self._flow_errors:
            if shown in message:  # the flow's "Finished in state Failed('... StepFailed: <message>')"
                self._flow_errors.remove((shown, name))
                record.msg, record.args = message.replace(shown, f"{name} (message above)"), ()
                break
        return True


def _as_in_state(error: BaseException) -> str:
    """How a Prefect state line shows `error`: its state message is "<text> <Type>: <message>", written
    with repr() (`Failed('...')`); "<text>" has no quotes, so the escaping depends on this part only."""
    return repr(f"{type(error).__name__}: {error}")[1:-1]


_USER_ERROR_LINES: _UserErrorLines | None = None


def hide_user_errors(hide: bool) -> None:
    """Install a fresh `_UserErrorLines` on Prefect's flow-run and task-run loggers (hide=False, for
    --debug: none)."""
    global _USER_ERROR_LINES
    old, _USER_ERROR_LINES = _USER_ERROR_LINES, (_UserErrorLines() if hide else None)
    for name in PREFECT_RUN_LOGGERS:
        logger = logging.getLogger(name)
        if old is not None:
            logger.removeFilter(old)
        if _USER_ERROR_LINES is not None:
            logger.addFilter(_USER_ERROR_LINES)


def _report(args: argparse.Namespace, error: Exception, code: int) -> int:
    """The end of a failed command: one line (what was wrong, where, what to do); the traceback first
    with --debug."""
    if args.debug:
        traceback.print_exception(error)
    message = str(error)
    label = ("recipe error:" + ("\n" if "\n" in message else " ")) if isinstance(error, RecipeError) else ""
    print(f"vcla {args.command}: {label}{message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
