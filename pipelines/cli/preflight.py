"""Cheap checks `vcla` runs before it starts a Prefect server or loads a model.

    preflight("train", recipe, options)   # RecipeError / UsageError / StepFailed, or None

Each command checks what it will need and can see now: files and folders the recipe names, the
API key's and Hub token's environment variables, the download distributor's package, each `--image`,
`--stage`, the checkpoint and the folders it builds on. The steps run the same checks again (they
may run without the CLI, as deployments); here they fail in a second instead of after a server
start or a model load. For `build-and-train`, paths under the demo corpus folder are made by the
run itself and are left to the steps. `serve` checks what its scheduled runs cannot get later: the
environment it passes them (a key it lacks now, they lack too) and installed packages; files may
appear before a run starts and are left to the runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from common.files import read_json
from common.layout import DONE_FILE
from pipelines.core.completion import is_done
from pipelines.core.errors import StepFailed, UsageError
from pipelines.recipe import Recipe, RecipeError
from pipelines.steps.evaluate import check_checkpoint_chain, checkpoint_to_use
from pipelines.steps.train import check_stage_option
from llm.config import unset_api_key_message

Check = Callable[[Recipe, argparse.Namespace], None]


def preflight(command: str, recipe: Recipe, options: argparse.Namespace) -> None:
    """Run the checks of `command` (see CHECKS) in order; the first problem raises."""
    for check in CHECKS.get(command, ()):
        check(recipe, options)


def _made_by_run(recipe: Recipe, options: argparse.Namespace, path: str) -> bool:
    """True for a path the demo-data step of this build-and-train run will create."""
    if options.command != "build-and-train" or recipe.demo is None:
        return False
    return Path(path).resolve().is_relative_to(Path(recipe.demo.output_dir).resolve())


def sources(recipe: Recipe, options: argparse.Namespace) -> None:
    from pipelines.steps.download.download import check_source_files

    if not any(_made_by_run(recipe, options, s.path) for s in recipe.sources):
        check_source_files(recipe)


def distributor(recipe: Recipe, options: argparse.Namespace) -> None:
    from pipelines.steps.download.download import check_distributor

    check_distributor(recipe)


def translator(recipe: Recipe, options: argparse.Namespace) -> None:
    """The memory files to import, and the API key when the translate step will run against an endpoint
    (not for `--estimate`: it sends nothing)."""
    cfg = recipe.translator
    if _finished(recipe, "translate"):
        return
    if not any(_made_by_run(recipe, options, f) for f in cfg.memory_import):
        recipe.require_files("translator.memory_import")
    if not getattr(options, "estimate", False):
        api_key(recipe, options)


def generator(recipe: Recipe, options: argparse.Namespace) -> None:
    """The generate section's files (boxes, cache imports, a prompt folder) and, when it will send
    requests, the API key."""
    cfg = recipe.generate
    if cfg is None or _finished(recipe, "generate"):
        return
    files = [b.path for b in cfg.boxes] + list(cfg.cache_import)
    if not any(_made_by_run(recipe, options, f) for f in files):
        recipe.require_files("generate.")
    if not getattr(options, "estimate", False):
        generate_key(recipe, options)


def generate_key(recipe: Recipe, options: argparse.Namespace) -> None:
    cfg = recipe.generate
    if cfg is not None and cfg.backend == "openai" and not os.environ.get(cfg.api_key_env):
        raise RecipeError(f"{recipe.file}: {unset_api_key_message(cfg.api_key_env, 'generate')}")


def api_key(recipe: Recipe, options: argparse.Namespace) -> None:
    cfg = recipe.translator
    if cfg.backend == "openai" and not os.environ.get(cfg.api_key_env):
        raise RecipeError(f"{recipe.file}: {unset_api_key_message(cfg.api_key_env)}")


def _finished(recipe: Recipe, step: str) -> bool:
    """Complete with nothing left to retry: the step will not build a client (no key needed)."""
    out = recipe.run_dir / step
    return is_done(out) and not read_json(out / DONE_FILE).get("retry_pending", 0)


def model(recipe: Recipe, options: argparse.Namespace) -> None:
    from training.build import ModelPathError, model_folders, require_model_folder

    for key, path, config, tokenizer in model_folders(recipe.model):
        if not _made_by_run(recipe, options, path):
            try:
                require_model_folder(key, path, config, tokenizer)
            except ModelPathError as e:
                raise RecipeError(f"{recipe.file}: {e}") from None


def eval_split(recipe: Recipe, options: argparse.Namespace) -> None:
    if recipe.eval.split and not _made_by_run(recipe, options, recipe.eval.split):
        recipe.require_files("eval.split")


def stage_option(recipe: Recipe, options: argparse.Namespace) -> None:
    check_stage_option(recipe, getattr(options, "stage", None))


def checkpoint(recipe: Recipe, options: argparse.Namespace) -> None:
    """The stage folder, and the earlier stages and base it loads from (a moved stage folder)."""
    check_checkpoint_chain(options.command, checkpoint_to_use(recipe, getattr(options, "checkpoint", None)))


def publish(recipe: Recipe, options: argparse.Namespace) -> None:
    """`publish.repo_id` and the Hub token, as the publish step will check them (exit 1, its message);
    in `build-and-train` only when it will publish (repo_id set)."""
    from pipelines.steps.publish import PublishError, check_settings

    required = options.command == "publish" or "publish" in _scheduled(recipe, options)
    if not required and recipe.publish.repo_id is None:
        return
    try:
        check_settings(recipe.publish, dry_run=getattr(options, "dry_run", False))
    except PublishError as e:
        raise StepFailed(f"publish: {e}") from None


def chat_image(recipe: Recipe, options: argparse.Namespace) -> None:
    checked_images(options.image, recipe.download.max_image_pixels)


def webui_bind(recipe: Recipe, options: argparse.Namespace) -> None:
    """Where `vcla webui` listens and with which login (pipelines/webui/safety.py): refused before a model loads."""
    from pipelines.webui.safety import bind_settings

    bind_settings(options.host, options.port, options.auth_env, options.share)


def webui_checkpoint(recipe: Recipe, options: argparse.Namespace) -> None:
    """`--checkpoint` must load; without it the run's last stage is used when trained (the data tab works
    without one)."""
    if options.checkpoint is not None:
        checkpoint(recipe, options)


def checked_images(paths: list[Path] | None, max_pixels: int) -> list[Image.Image]:
    """Every `--image` (repeatable), in order, through `checked_image`; the first bad one raises."""
    if not paths:
        raise UsageError("--image: required; pass --image PATH (a JPEG, PNG or WebP file; repeat it for several)")
    return [checked_image(path, max_pixels) for path in paths]


def checked_image(path: Path | None, max_pixels: int, flag: str = "--image") -> Image.Image:
    """`--image` decoded to RGB with the download step's checks (empty, not an image, truncated,
    decompression bomb); UsageError naming the file (after `flag`: `/image` in an interactive chat) otherwise."""
    from pipelines.steps.download.images import ImageRejected, open_image, to_rgb

    if path is None:
        raise UsageError(f"{flag}: required; pass {flag} PATH (a JPEG, PNG or WebP file)")
    try:
        data = Path(path).read_bytes()
        return to_rgb(open_image(data, max_pixels))
    except FileNotFoundError:
        raise UsageError(f"{flag} {path}: file not found; pass an existing image file") from None
    except IsADirectoryError:
        raise UsageError(f"{flag} {path}: is a folder; pass an image file") from None
    except PermissionError:
        raise UsageError(f"{flag} {path}: not readable (permission denied)") from None
    except ImageRejected as e:
        raise UsageError(f"{flag} {path}: cannot use it ({e}); pass a JPEG, PNG or WebP file") from None


def export_out(recipe: Recipe, options: argparse.Namespace) -> None:
    if options.out is not None and Path(options.out).exists() and not Path(options.out).is_dir():
        raise UsageError(f"--out {options.out}: is a file; pass a folder (it is created if missing)")


def _scheduled(recipe: Recipe, options: argparse.Namespace) -> set[str]:
    return {s.flow for s in recipe.schedules} if options.command == "serve" else set()


def served_flows(recipe: Recipe, options: argparse.Namespace) -> None:
    """`vcla serve`: a recipe with schedules, and for the flows they run what no run can get later:
    the distributor's package, the API key, the Hub token (a served translate may run whenever new
    records come, so its key is checked even if the step is finished now)."""
    from pipelines.orchestration.schedules import check_schedules

    check_schedules(recipe)
    flows = _scheduled(recipe, options)
    for flow, check in (("download", distributor), ("generate", generate_key), ("translate", api_key),
                        ("publish", publish)):
        if flow in flows or "build-and-train" in flows:
            check(recipe, options)


CHECKS: dict[str, tuple[Check, ...]] = {
    "download": (distributor, sources),
    "generate": (generator,),
    "translate": (translator,),
    "publish": (publish,),
    "train": (stage_option, model),
    "eval": (eval_split, checkpoint),
    "chat": (chat_image, checkpoint),
    "webui": (webui_bind, webui_checkpoint),
    "export": (export_out, checkpoint),
    "build-and-train": (distributor, sources, generator, translator, model, eval_split, publish),
    "serve": (served_flows,),
}
