"""A Qwen2-style LLM (tiny random config, saved in a temp folder, loaded by path) through `vcla build-and-train`
on a small demo with `--set` overrides: `template: auto` picks ChatML for render and training, and the run ends
with a chat answer (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import pipelines.orchestration.flows  # noqa: F401  (the CLI's flows, imported before main() runs them)
from pipelines.cli.main import main
from templates.registry import get_template
from training.tokenizer import build_tokenizer

pytestmark = pytest.mark.xdist_group("prefect")

TINY = ["demo.num_images=24", "stages.stage1.max_steps=2", "stages.stage2.max_steps=3",
        "stages.stage1.batch_size=4", "stages.stage2.batch_size=4", "stages.stage1.epochs=1", "stages.stage2.epochs=1",
        "eval.limit=4", "eval.suites={}"]
QWEN2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 512, "tie_word_embeddings": False}


def corpus_texts(folder: Path) -> list[str]:
    """Every string of the demo corpus's JSON / JSONL files (what the LLM's tokenizer should know)."""
    def walk(value) -> list[str]:
        if isinstance(value, str):
            return [value]
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
        return [s for v in items for s in walk(v)]

    texts = []
    for path in sorted(folder.rglob("*.json*")):
        raw = path.read_text(encoding="utf-8")
        rows = [json.loads(x) for x in raw.splitlines() if x.strip()] if path.suffix == ".jsonl" else [json.loads(raw)]
        texts += [t for t in walk(rows) if len(t) < 2000 and "/" not in t]
    return texts


def qwen2_by_path(tmp: Path, texts: list[str]) -> tuple[Path, Path]:
    """(model folder, tokenizer folder): a ChatML-aware tokenizer trained on `texts`, a random Qwen2 sized to it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    chatml = get_template("chatml")
    control = f"<|im_start|>system\n{chatml.system}<|im_end|>\n<|im_start|>user\n<|im_end|><|im_start|>assistant\n"
    tokenizer = build_tokenizer([control] * 3 + texts, vocab_size=1200)
    tokenizer.save_pretrained(tmp / "qwen2-tokenizer")  # beside the model: AutoTokenizer would read its config
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", vocab_size=len(tokenizer), **QWEN2)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp / "qwen2")
    return tmp / "qwen2", tmp / "qwen2-tokenizer"


def test_a_qwen2_llm_by_path_through_build_and_train_chats_in_chatml(prefect_server, tmp_path):
    run_dir = tmp_path / "run"
    sets = [x for s in TINY for x in ("--set", s)]
    assert main(["demo-data", "--run-dir", str(run_dir), *sets]) == 0
    model, tokenizer = qwen2_by_path(tmp_path, corpus_texts(run_dir / "demo-data"))
    qwen = ["model.llm.init=null", f"model.llm.path={model}", f"model.llm.tokenizer={tokenizer}",
            "render.sft_template=auto", "stages.stage2.template=auto"]
    assert main(["build-and-train", "--run-dir", str(run_dir), *sets, *[x for s in qwen for x in ("--set", s)]]) == 0

    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    answer = summary["eval"]["chat"]["answer"]
    assert isinstance(answer, str) and answer.strip(), summary["eval"]["chat"]
    assert "<|im_end|>" not in answer and "<|im_start|>" not in answer  # cut at ChatML's stop string
    stage2 = json.loads((run_dir / "train" / "stage2" / "stage.json").read_text(encoding="utf-8"))
    assert stage2["template"] == "chatml" and summary["stages"]["train"]["stage2"]["steps"] == 3
    shards = sorted((run_dir / "render" / "data" / "sft").rglob("*.parquet"))
    assert shards and {t for p in shards for t in pq.read_table(p, columns=["template"]).column("template").to_pylist()} \
        == {"chatml"}
    config = json.loads((run_dir / "train" / "stage2" / "config.json").read_text(encoding="utf-8"))
    assert config["text_config"]["model_type"] == "qwen2"
