"""Stage folders (VisualCLA release layout), the merged layout, and loading either back.

A stage folder (`runs/<name>/train/<stage>/`):

    adapter_config.json, adapter_model.safetensors   LoRA of both encoders + modules to save (peft); only for
                                                      stages that train something with LoRA
    non_lora_trainables.safetensors                   modules trained in full outside peft (if any)
    config.json                                       VisualCLAConfig (model_type "visualcla")
    tokenizer files, preprocessor_config.json
    stage.json                                        base, init_from, template, trainable, recipe, prompt
                                                      (the shards' VQA hint + template: what eval and chat ask with)
    training_args.json, metrics.json

`stage.json` names where the frozen weights come from (`base`: a merged folder, or null when the
config's `*_name_or_path` point at the user's model folders) and `init_from` (the previous
stage). Loading a stage = its base, then each earlier stage merged in order, then its own weights.

Paths are relocatable: a path into the run folder (`base`, `init_from`, the config's
`*_name_or_path` when they point at `train/base/...`) is stored relative to the stage folder and
resolved against it when loaded (`portable_path` / `resolve_stored`), so a copied or moved `train/`
(or run folder) loads without the original. Paths outside the run folder (the user's model
folders) are stored absolute. Absolute paths written by older versions still load. The resume key
(`run_key.json`), `training_args.json` and `metrics.json` `resumed_from` hold no path into the run
folder either (`training.run.run_key`), so a stage that crashed in a moved run folder resumes.

The merged layout (`save_merged`) is what `export --format merged` writes and what `prepare_base`
writes for models built from `init`:

    config.json, vision_encoder/, text_encoder/, connector.safetensors, tokenizer files,
    special_tokens_map.json, preprocessor_config.json

It follows VisualCLA's merged layout (`text_encoder/`, `vision_encoder/`, config, tokenizer, processor)
except where README.md ("Export") says: the resampler + projection tensors are in
`connector.safetensors` (VisualCLA: `pytorch_model.bin`, a pickle we never write), with VisualCLA's
key prefixes `visual_resampler.` / `image_projection_layer.`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import BlipImageProcessorPil, CLIPImageProcessorPil, SiglipImageProcessorPil

from common.files import share_tree, write_json
from common.layout import STAGE_FILE
from common.storage import STORAGE_ERRNOS, WRITE_FAILED, StorageError, nearest_folder, storage_errno, storage_message
from templates.instructions import PROMPT_RECORD, HintPolicy
from training.model import VisualCLAConfig, VisualCLAModel

NON_LORA = "non_lora_trainables.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight files that are unpickled when loaded (pytorch_model.bin, adapter_model.bin, *.pt, ...)."""
CODE_CONFIGS = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")
"""Files whose `auto_map` would make transformers import the folder's own Python code."""


class UnsafeCheckpointError(ValueError):
    """A folder we will not load: pickle-only weights, or custom code it asks transformers to run."""


def check_folder(folder: Path, what: str = "model") -> None:
    """Refuse `folder` before anything loads from it: it must be a local folder whose weights are
    safetensors (pickle can run code when loaded) and that names no custom code (`auto_map`;
    trust_remote_code is never enabled, and with it unset transformers would *ask* on a terminal)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder}: {what} folder not found (model paths are local folders; nothing is downloaded)")
    names = {p.name for p in folder.iterdir() if p.is_file()}
    safe = any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names)
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    adapter_unsafe = "adapter_config.json" in names and "adapter_model.safetensors" not in names
    if (pickles and not safe) or adapter_unsafe:
        raise UnsafeCheckpointError(
            f"{folder}: {what} weights are not safetensors (found {pickles or 'no adapter_model.safetensors'}); "
            "visualcla-forge loads safetensors only, because unpickling a file can run arbitrary code. Convert the "
            "weights in an environment you trust (save_pretrained(..., safe_serialization=True)) or use a "
            "safetensors release of the model."
        )
    for name in CODE_CONFIGS:
        if name in names and "auto_map" in _json_object(folder / name):
            raise UnsafeCheckpointError(
                f"{folder / name}: has `auto_map`, i.e. asks to run the folder's own Python code; visualcla-forge "
                "never enables trust_remote_code. Remove the `auto_map` entry if the model is a supported "
                "architecture (CLIP, BLIP-2, LLaMA), or use a folder without custom code."
            )


def check_model_paths(config: VisualCLAConfig) -> None:
    """`check_folder` for every folder a VisualCLAConfig loads weights from."""
    for what, path in (("vision", config.vision_name_or_path), ("LLM", config.text_name_or_path),
                       ("connector", config.connector_name_or_path)):
        if path:
            check_folder(Path(path), what)


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UnsafeCheckpointError(f"{path}: not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


# ---- writing so that a killed or failed write never leaves a folder that looks finished --------

WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)
"""What a failed checkpoint write raises: OSError, torch.save's RuntimeError, safetensors' error."""


class CheckpointWriteError(StorageError):
    """A checkpoint or stage folder could not be written (disk full, no permission, ...); the
    message is common.storage's wording."""


def checkpoint_write_error(what: str, path: Path, err: BaseException) -> CheckpointWriteError:
    """The error to raise when writing `path` failed: what, where, the cause, and what to do."""
    code = storage_errno(err)
    cause, todo = STORAGE_ERRNOS[code] if code is not None else WRITE_FAILED
    # a StorageError (from common.files) is already worded: keep only what it is about
    detail = f"[Errno {code}] {os.strerror(code)}: {err.filename!r}" if isinstance(err, StorageError) and code else str(err)
    return CheckpointWriteError(storage_message(
        f"could not write the {what} {path}", cause, todo, nearest_folder(path, itself=True), detail=detail,
        then="rerun with --resume: training continues from the last complete checkpoint (incomplete ones are "
             "never used)"))


# ---- merged layout ------------------------------------------------------------------------

def save_merged(model: VisualCLAModel, tokenizer, processor, out: Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.vision_model.save_pretrained(out / "vision_encoder")
    model.text_model.save_pretrained(out / "text_encoder")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if k.startswith(("visual_resampler.", "image_projection_layer."))}
    save_file(state, str(out / "connector.safetensors"), metadata={"format": "pt"})
    config = VisualCLAConfig.from_dict(model.config.to_dict())
    config.vision_name_or_path, config.text_name_or_path = "vision_encoder", "text_encoder"
    config.connector_name_or_path = "."
    config.text_config.vocab_size = model.text_model.config.vocab_size
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_special_tokens_map(tokenizer, out)
    processor.save_pretrained(out)
    share_tree(out, folders=False)  # safetensors writes 0600 whatever the umask
    return out


def write_special_tokens_map(tokenizer, out: Path) -> None:
    """`special_tokens_map.json` as VisualCLA's release has it (bos/eos/unk/pad + the image tokens).
    transformers 5 no longer writes this file and reads it only for tokenizers saved without
    `added_tokens_decoder` (not ours), so it is for other loaders and for people reading the folder."""
    from templates.image import ADDED_TOKENS

    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    data = {k: str(getattr(tokenizer, k)) for k in names if getattr(tokenizer, k, None) is not None}
    data["additional_special_tokens"] = [t for t in ADDED_TOKENS if t in tokenizer.get_vocab()]
    write_json(Path(out) / "special_tokens_map.json", data, sort_keys=False, default=str)


def merged_config(folder: Path) -> VisualCLAConfig:
    folder = Path(folder)
    config = VisualCLAConfig.from_pretrained(folder)
    config.vision_name_or_path = str(folder / "vision_encoder")
    config.text_name_or_path = str(folder / "text_encoder")
    config.connector_name_or_path = str(folder)
    return config


def load_merged(folder: Path, dtype: torch.dtype | None = None) -> VisualCLAModel:
    check_folder(folder, "merged checkpoint")
    config = merged_config(folder)
    check_model_paths(config)
    return VisualCLAModel.from_parts(config, dtype=dtype)


def is_merged(folder: Path) -> bool:
    return (Path(folder) / "text_encoder").is_dir() and (Path(folder) / "connector.safetensors").is_file()


# ---- relocatable paths ----------------------------------------------------------------------

PATH_FIELDS = ("vision_name_or_path", "text_name_or_path", "connector_name_or_path")
"""The config fields that name folders weights are loaded from."""


def run_root(stage_dir: Path) -> Path:
    """The folder that moves together with a stage folder: the run folder (`runs/<name>/` for
    `runs/<name>/train/<stage>/`), else the stage folder's parent."""
    stage_dir = Path(stage_dir).resolve()
    return stage_dir.parent.parent if stage_dir.parent.name == "train" else stage_dir.parent


def portable_path(path: str | Path | None, stage_dir: Path) -> str | None:
    """How a stage folder stores `path`: relative to `stage_dir` if it lies inside the run folder
    (`run_root`), absolute otherwise (the user's model folders stay where they are)."""
    if path is None or str(path) == "":
        return None
    absolute, stage_dir = Path(path).resolve(), Path(stage_dir).resolve()
    root = run_root(stage_dir)
    if absolute == root or root in absolute.parents:
        return os.path.relpath(absolute, stage_dir)
    return str(absolute)


def resolve_stored(folder: Path, value: str | None) -> str | None:
    """A path a stage folder stored, as a path to open: relative ones are relative to `folder`
    (falling back to the current directory, as older versions stored recipe paths as given)."""
    if not value:
        return value
    path = Path(value)
    if path.is_absolute():
        return str(path)
    inside = Path(folder) / path
    if inside.exists() or not path.exists():
        return os.path.normpath(inside)
    return str(path)


def stage_base(folder: Path) -> Path | None:
    """The merged base folder a stage folder names in `stage.json` (resolved), or None."""
    base = read_stage(folder).get("base")
    return Path(resolve_stored(folder, base)) if base else None


def stage_config(folder: Path) -> VisualCLAConfig:
    """The stage's `config.json` with its model paths resolved against the folder."""
    config = VisualCLAConfig.from_pretrained(folder)
    for name in PATH_FIELDS:
        setattr(config, name, resolve_stored(folder, getattr(config, name)))
    return config


# ---- stage folders ------------------------------------------------------------------------

def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_stage(model, out: Path, *, config: VisualCLAConfig, tokenizer, processor, meta: dict) -> Path:
    """Write the stage folder (see the module docstring); `model` is the trained (peft) model."""
    from peft import PeftModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lora_names: set[str] = set()
    if isinstance(model, PeftModel):
        model.save_pretrained(out, safe_serialization=True)
        lora_names = {n for n, _ in model.named_parameters() if "lora_" in n or "modules_to_save" in n}
        base = model.get_base_model()
        prefix = "base_model.model."
    else:
        base, prefix = model, ""
    rest = {n[len(prefix):]: t for n, t in trainable_state(model).items() if n not in lora_names}
    if rest:
        save_file(rest, str(out / NON_LORA), metadata={"format": "pt"})
    config = copy.deepcopy(config)  # the live model's config keeps its absolute paths
    for name in PATH_FIELDS:
        setattr(config, name, portable_path(getattr(config, name), out))
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    write_json(out / STAGE_FILE, meta, sort_keys=False, default=str)
    del base
    share_tree(out, folders=False)  # safetensors writes 0600 whatever the umask
    return out


def read_stage(folder: Path) -> dict:
    return json.loads((Path(folder) / STAGE_FILE).read_text())


def load_stage(folder: Path, dtype: torch.dtype | None = None, merge: bool = True):
    """The model a stage folder describes. merge=True: a plain VisualCLAModel with every LoRA merged;
    merge=False: the last stage's adapter stays a PeftModel (earlier stages merged)."""
    folder = Path(folder)
    if is_merged(folder) and not (folder / STAGE_FILE).is_file():
        return load_merged(folder, dtype)
    check_folder(folder, "stage")
    meta = read_stage(folder)
    if meta.get("init_from"):
        model = load_stage(Path(resolve_stored(folder, meta["init_from"])), dtype, merge=True)
    elif meta.get("base"):
        model = load_merged(stage_base(folder), dtype)
    else:
        config = stage_config(folder)
        check_model_paths(config)
        model = VisualCLAModel.from_parts(config, dtype=dtype)
    return apply_stage(model, folder, merge=merge)


def apply_stage(model: VisualCLAModel, folder: Path, merge: bool = True, trainable: bool = False):
    folder = Path(folder)
    check_folder(folder, "stage")
    if (folder / NON_LORA).is_file():
        missing, unexpected = model.load_state_dict(load_file(str(folder / NON_LORA)), strict=False)
        if unexpected:
            raise ValueError(f"{folder / NON_LORA}: tensors the model does not have: {unexpected[:3]}")
    if (folder / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
        if merge:
            model = model.merge_and_unload()
    return model


def load_for_inference(folder: Path, dtype: torch.dtype | None = None):
    """(model, tokenizer, image processor, template name) of a stage or merged folder, in eval mode."""
    from transformers import AutoTokenizer


    folder = Path(folder)
    model = load_stage(folder, dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    meta = read_stage(folder) if (folder / STAGE_FILE).is_file() else {}
    template = meta.get("template") or _template_from(folder)
    return model, tokenizer, image_processor_from(folder, model.config), template


TEMPLATE_FILE = "prompt_template.json"
"""An export's prompt-template name (`{"template": "visualcla"}`). Not `chat_template.json`:
transformers reads that name as its own (Jinja) chat-template file."""


def _template_from(folder: Path) -> str:
    for name in (TEMPLATE_FILE, "chat_template.json"):  # chat_template.json: exports of older versions
        file = Path(folder) / name
        if file.is_file():
            data = json.loads(file.read_text())
            if isinstance(data, dict) and isinstance(data.get("template"), str):
                return data["template"]
    return "visualcla"


def stage_prompt(folder: Path) -> dict:
    """The prompt record a stage folder keeps (stage.json `prompt`: the VQA hint its shards were rendered
    with, its length rule, the template) or an export carries (prompt_template.json `prompt`); {} for a
    folder written before the record existed."""
    for file in (Path(folder) / STAGE_FILE, Path(folder) / TEMPLATE_FILE):
        if file.is_file():
            data = json.loads(file.read_text(encoding="utf-8"))
            record = data.get(PROMPT_RECORD) if isinstance(data, dict) else None
            return record if isinstance(record, dict) else {}
    return {}


def stage_hint(folder: Path) -> HintPolicy:
    """The short-answer hint a checkpoint was trained with (`stage_prompt`; the defaults without one)."""
    return HintPolicy.from_record(stage_prompt(folder))


def find_stage(run_train_dir: Path, name: str) -> Path:
    """A stage's checkpoint inside the run folder (`train/<name>/`), which must be complete."""
    folder = Path(run_train_dir) / name
    if not (folder / STAGE_FILE).is_file():
        raise FileNotFoundError(f"{folder}: stage {name!r} has no finished checkpoint (train it first)")
    return folder


def image_processor_from(folder: Path, config) -> object:
    """The image processor saved in a checkpoint folder (PIL backend: no torchvision needed)."""
    cls = {"clip_vision_model": CLIPImageProcessorPil, "siglip_vision_model": SiglipImageProcessorPil}.get(
        config.vision_config.model_type, BlipImageProcessorPil)
    return cls.from_pretrained(str(folder))
