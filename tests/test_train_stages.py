"""Tiny models, real `from_pretrained`: gradients per stage, save/load, merge, resume, export, eval, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from training.checkpoint import load_merged, load_stage
from training.config import EvalConfig, ModelConfig, StageConfig
from training.lora import setup_stage
from training.run import train_stage
from training.synthetic import write_synthetic_shards

REPO = Path(__file__).resolve().parent.parent
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}
LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}


def model_cfg(**over) -> ModelConfig:
    cfg = {"architecture": "visualcla",
           "vision": {"kind": "clip", "image_size": 32, "init": VISION},
           "connector": {"kind": "resampler", "num_queries": 4, "hidden_size": 32, "num_layers": 1, "num_heads": 2},
           "llm": {"init": LLM}}
    for k, v in over.items():
        cfg[k] = {**cfg[k], **v} if isinstance(v, dict) else v
    return ModelConfig(**cfg)


LLAVA = dict(architecture="llava", vision={"feature_layer": -2, "keep_cls": False, "post_layernorm": False},
             connector={"kind": "mlp2x_gelu"})


def stage(**over) -> StageConfig:
    base = {"data": "pretrain", "template": "none", "max_steps": 3, "batch_size": 4, "logging_steps": 1,
            "save_steps": 2, "max_length": 96, "lr": {"default": 1e-3}, "warmup_ratio": 0.0,
            "trainable": {"vision": "lora", "connector": "full", "llm": "lora", "embeddings": True}}
    base.update(over)
    return StageConfig(**base)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_images=32, row_group_rows=8)


@pytest.fixture(scope="module")
def visualcla_run(tmp_path_factory, shards) -> Path:
    run = tmp_path_factory.mktemp("run")
    train_stage(model_cfg(), "stage1", stage(), shards, run / "train" / "stage1")
    train_stage(model_cfg(), "stage2", stage(data="sft", template="visualcla", max_length=160), shards,
                run / "train" / "stage2", init_from=run / "train" / "stage1")
    return run / "train"


def batch_for(model, n_rows=2, length=12):
    n = model.config.num_image_tokens
    ids = torch.randint(5, 300, (n_rows, length))
    ids[:, 1] = model.config.image_start_token_id
    ids[:, 2:2 + n] = model.config.image_token_id
    ids[:, 2 + n] = model.config.image_end_token_id
    size = model.config.vision_config.image_size
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone(),
            "pixel_values": torch.randn(n_rows, 3, size, size)}


def grads_by_module(model) -> set[str]:
    out = model(**batch_for(model))
    out.loss.backward()
    names = set()
    for name, p in model.named_parameters():
        if p.grad is not None and p.grad.abs().sum() > 0:
            name = name.replace("base_model.model.", "")
            kind = "lora" if "lora_" in name else "full"
            names.add(f"{name.split('.')[0]}:{kind}" + (":embed" if "embed_tokens" in name or "lm_head" in name else ""))
    return names


def test_stage_folder_layout(visualcla_run):
    s1, s2 = visualcla_run / "stage1", visualcla_run / "stage2"
    for f in ("adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json",
              "preprocessor_config.json", "training_args.json", "metrics.json", "stage.json"):
        assert (s2 / f).is_file(), f
    assert not list(s2.rglob("*.bin")) and not list(s2.glob("*.pt"))  # weights: safetensors only
    assert (s2 / "checkpoints" / "checkpoint-2" / "trainable.safetensors").is_file()
    assert json.loads((s2 / "config.json").read_text())["model_type"] == "visualcla"
    from safetensors import safe_open

    with safe_open(str(s2 / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    for part in ("vision_model", "text_model", "visual_resampler", "image_projection_layer", "embed_tokens", "lm_head"):
        assert any(k.startswith("base_model.model.") and part in k for k in keys), part
    assert json.loads((s2 / "stage.json").read_text())["init_from"] == "../stage1"
    m = json.loads((s2 / "metrics.json").read_text())
    assert m["steps"] == 3 and 0 <= m["padding_fraction"] < 1 and len(m["losses"]) == 3


def test_forward_backward_shapes_and_gradients_per_stage(visualcla_run):
    base = visualcla_run / "base"
    model = load_merged(base)
    b = batch_for(model)
    out = model.eval()(**b)
    assert out.logits.shape == (2, 12, model.text_model.config.vocab_size)
    trained = model.train()(**b)  # training: the loss from logits of trained positions only
    assert trained.logits is None
    torch.testing.assert_close(trained.loss, out.loss, rtol=1e-5, atol=1e-6)
    assert grads_by_module(setup_stage(load_merged(base), stage().trainable, stage().lora)) == {
        "vision_model:lora", "text_model:lora", "visual_resampler:full", "image_projection_layer:full",
        "text_model:full:embed"}
    llava1 = stage(trainable={"vision": "frozen", "connector": "full", "projection": "full", "llm": "frozen"})
    assert grads_by_module(setup_stage(load_merged(base), llava1.trainable, llava1.lora)) == {
        "visual_resampler:full", "image_projection_layer:full"}
    llava2 = stage(trainable={"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"})
    assert grads_by_module(setup_stage(load_merged(base), llava2.trainable, llava2.lora)) == {
        "visual_resampler:full", "image_projection_layer:full", "text_model:full", "text_model:full:embed"}
    ziya = stage(trainable={"vision": "frozen", "connector": "frozen", "projection": "full", "llm": "lora"})
    assert grads_by_module(setup_stage(load_merged(base), ziya.trainable, ziya.lora)) == {
        "image_projection_layer:full", "text_model:lora"}


def test_save_load_and_merge_give_identical_logits(visualcla_run, tmp_path):
    from training.export import export

    s2 = visualcla_run / "stage2"
    b = batch_for(load_merged(visualcla_run / "base"))
    unmerged = load_stage(s2, merge=False).eval()
    merged = load_stage(s2, merge=True).eval()
    again = load_stage(s2, merge=True).eval()
    with torch.no_grad():
        a, m, m2 = (x(**b).logits for x in (unmerged, merged, again))
    assert torch.equal(m, m2)  # save -> load is exact
    torch.testing.assert_close(a, m, rtol=1e-4, atol=1e-4)  # merging LoRA changes only rounding
    out = export(s2, "merged", tmp_path / "merged")
    assert {"text_encoder", "vision_encoder", "connector.safetensors", "config.json", "tokenizer.json",
            "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    with torch.no_grad():
        assert torch.equal(load_merged(out).eval()(**b).logits, m)
    base = load_merged(visualcla_run / "base").eval()
    with torch.no_grad():
        assert not torch.allclose(base(**b).logits, m)  # training changed something


def test_resume_gives_the_same_loss_curve(shards, tmp_path):
    cfg, st = model_cfg(), stage(max_steps=4, save_steps=2)
    full = train_stage(cfg, "stage1", st, shards, tmp_path / "a" / "train" / "stage1")
    # interrupted run: stop after step 2 (checkpoint-2), then resume to step 4
    part = train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2), shards, tmp_path / "b" / "train" / "stage1",
                       _stop_after=2)
    resumed = train_stage(cfg, "stage1", st, shards, tmp_path / "b" / "train" / "stage1", resume=True)
    assert resumed["resumed_from"].endswith("checkpoint-2")
    curve = dict(part["losses"]) | dict(resumed["losses"])
    assert [round(curve[s], 5) for s in (1, 2, 3, 4)] == [round(l, 5) for _, l in full["losses"]]


def test_gradient_checkpointing_trains_the_same_losses(shards, tmp_path, monkeypatch):
    """Activations recomputed in the backward (LoRA dropout included: its RNG state is replayed)."""
    import transformers.modeling_utils as hf  # counted where transformers takes torch's checkpoint from

    cfg = model_cfg()
    plain = train_stage(cfg, "stage1", stage(max_steps=3), shards, tmp_path / "a" / "train" / "stage1")
    calls, checkpoint = [], hf.checkpoint
    monkeypatch.setattr(hf, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    ckpt = train_stage(cfg, "stage1", stage(max_steps=3, gradient_checkpointing=True), shards,
                       tmp_path / "b" / "train" / "stage1")
    assert len(calls) == 3 * 4  # every step, each of the 2 LLM and 2 vision layers (LoRA trains both)
    torch.testing.assert_close(torch.tensor([l for _, l in ckpt["losses"]]),
                               torch.tensor([l for _, l in plain["losses"]]), rtol=1e-5, atol=1e-5)


def test_gradient_accumulation_steps_over_several_batches(shards, tmp_path):
    m = train_stage(model_cfg(), "stage1", stage(max_steps=2, grad_accum=3, batch_size=2), shards,
                    tmp_path / "train" / "stage1")
    assert (m["steps"], m["batches_per_rank"], m["samples"]) == (2, 6, 12)  # 3 micro-batches an optimizer step


def test_accumulated_gradients_equal_one_batch_of_both():
    """What the Trainer does with `num_items_in_batch`: micro-batches each divide their summed loss
    by the trained tokens of the whole accumulation window, so their gradients add up to the
    gradient of one batch holding both (padding changes nothing: right padding, causal attention)."""
    model = tiny_llava_model()
    torch.manual_seed(1)
    a, b = torch.randint(5, 300, (2, 12)), torch.randint(5, 300, (3, 7))
    la, lb = a.clone(), b.clone()
    la[:, :4], lb[:, :2] = -100, -100
    total = int((la[:, 1:] != -100).sum() + (lb[:, 1:] != -100).sum())

    def grads(**batch):
        model.zero_grad()
        model(**batch).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ga = grads(input_ids=a, labels=la, num_items_in_batch=torch.tensor(total))
    gb = grads(input_ids=b, labels=lb, num_items_in_batch=torch.tensor(total))
    ids = torch.cat([a, torch.nn.functional.pad(b, (0, 5), value=0)])
    labels = torch.cat([la, torch.nn.functional.pad(lb, (0, 5), value=-100)])
    mask = torch.cat([torch.ones_like(a), torch.nn.functional.pad(torch.ones_like(b), (0, 5))])
    both = grads(input_ids=ids, labels=labels, attention_mask=mask)
    for name, g in both.items():
        torch.testing.assert_close(ga[name] + gb[name], g, rtol=1e-4, atol=1e-6)


def tiny_llava_model():
    from transformers import LlamaConfig

    from training.model import VisualCLAConfig, VisualCLAModel

    config = VisualCLAConfig(vision_config={"model_type": "clip_vision_model", **VISION},
                             text_config=LlamaConfig(**LLM).to_dict(), visual_resampler_config={"kind": "linear"},
                             image_token_id=499)
    torch.manual_seed(0)
    return VisualCLAModel(config).train()


@pytest.mark.parametrize("scheduler", ["cosine", "linear"])
def test_schedule_warmup_learning_rate_groups_and_tensorboard_logs(shards, tmp_path, scheduler):
    """The logged learning rate follows warm-up then the schedule; each module group starts from its
    own rate (the checkpoint's optimizer); loss, learning rate and padding fraction reach TensorBoard."""
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rates = {"default": 1e-3, "connector": 2e-3, "vision": 5e-4, "llm": 1e-4}
    out = tmp_path / "train" / "stage1"
    train_stage(model_cfg(), "stage1", stage(max_steps=6, save_steps=6, warmup_ratio=0.3, scheduler=scheduler,
                                             lr=rates), shards, out)
    events = EventAccumulator(str(out / "logs")).Reload()
    logged = [e.value for e in events.Scalars("train/learning_rate")]
    warm, total = 2, 6  # ceil(0.3 * 6) warm-up steps
    decay = (lambda t: 0.5 * (1 + math.cos(math.pi * t))) if scheduler == "cosine" else (lambda t: 1 - t)
    expected = [s / warm if s < warm else decay((s - warm) / (total - warm)) for s in range(total)]
    # the Trainer logs the first optimizer group's rate: the connector's
    assert logged == pytest.approx([rates["connector"] * f for f in expected], rel=1e-4, abs=1e-12)
    assert len(events.Scalars("train/loss")) == total and events.Scalars("train/padding_fraction")
    state = torch.load(out / "checkpoints" / "checkpoint-6" / "optimizer.pt", weights_only=True)
    assert sorted({g["initial_lr"] for g in state["param_groups"]}) == sorted(
        {rates["connector"], rates["vision"], rates["llm"]})


def test_auto_resume_only_from_checkpoints_of_the_same_run(shards, tmp_path):
    """What build-and-train does after a crash: resume if nothing changed, else start afresh."""
    cfg, out = model_cfg(), tmp_path / "train" / "stage1"
    train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2), shards, out, resume="auto", _stop_after=2)
    resumed = train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2), shards, out, resume="auto")
    assert resumed["resumed_from"].endswith("checkpoint-2") and resumed["steps"] == 4
    assert train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2), shards, out, resume="auto").get("skipped")

    other = tmp_path / "other" / "stage1"
    train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2), shards, other, resume="auto", _stop_after=2)
    changed = train_stage(cfg, "stage1", stage(max_steps=4, save_steps=2, lr={"default": 3e-4}), shards, other,
                          resume="auto")
    assert changed["resumed_from"] is None and changed["steps"] == 4


def test_llava_hf_export_generates_the_same_greedy_tokens(shards, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from training.export import export

    cfg = model_cfg(**LLAVA)
    st = stage(trainable={"vision": "frozen", "connector": "full", "projection": "full", "llm": "lora"},
               data="sft", template="visualcla", max_length=160, max_steps=2)
    train_stage(cfg, "stage2", st, shards, tmp_path / "train" / "stage2")
    ours = load_stage(tmp_path / "train" / "stage2").eval()
    out = export(tmp_path / "train" / "stage2", "llava-hf", tmp_path / "llava")
    theirs = LlavaForConditionalGeneration.from_pretrained(out).eval()
    b = batch_for(ours, n_rows=1, length=ours.config.num_image_tokens + 8)
    kw = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    mine = ours.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"], **kw)
    ref = theirs.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], pixel_values=b["pixel_values"], **kw)
    assert mine[0].tolist() == ref[0, b["input_ids"].shape[1]:].tolist()


def test_chat_and_evaluate(visualcla_run, tmp_path):
    from training.chat import ChatModel, chat
    from training.evaluate import evaluate, normalize
    from training.synthetic import draw

    bot = ChatModel.load(visualcla_run / "stage2")
    reply, history = chat(bot, draw("红色", "圆形"), "圆形是什么颜色？", max_new_tokens=4)
    reply2, history = chat(bot, draw("红色", "圆形"), "它是什么形状？", history, max_new_tokens=4, do_sample=False)
    assert [h["type"] for h in history] == ["instruction", "response"] * 2 and isinstance(reply2, str)
    # an earlier answer that wrote an image block as text stays text (it is no image to place)
    from templates.image import IMAGE_BLOCK

    odd = [history[0], {"type": "response", "value": f"见{IMAGE_BLOCK}。"}]
    reply3, _ = chat(bot, draw("红色", "圆形"), "还有别的吗？", odd, max_new_tokens=2, do_sample=False)
    assert isinstance(reply3, str)
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    (corpus / "heldout").mkdir()
    lines = []
    for i, c in enumerate(["红色", "蓝色", "绿色"]):
        (corpus / "images" / f"{i}.png").write_bytes(draw(c, "圆形", seed=i))
        lines.append(json.dumps({"id": i, "image": f"images/{i}.png", "question": "圆形是什么颜色？", "answer": c}))
    (corpus / "heldout" / "eval_zh.jsonl").write_text("\n".join(lines) + "\n")
    m = evaluate(visualcla_run / "stage2", corpus / "heldout" / "eval_zh.jsonl", EvalConfig(batch_size=2, max_new_tokens=3),
                 out=tmp_path / "eval")
    assert m["n"] == 3 and 0 <= m["accuracy"] <= 1 and (tmp_path / "eval" / "eval_predictions.jsonl").is_file()
    assert normalize(" 红色。") == normalize("红色") and normalize("Blue!") == "blue"


@pytest.mark.slow
def test_two_steps_under_torchrun_on_cpu_keep_the_replicas_in_sync(shards, tmp_path):
    """Two ranks (gloo DDP): each trains on its own shards, gradients are all-reduced, so both
    replicas end with the same weights (a run where each rank trained alone would not)."""
    import socket

    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys, json, os\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from pathlib import Path\n"
        "from safetensors.torch import save_file\n"
        "from tests.test_train_stages import model_cfg, stage\n"
        "from training.checkpoint import trainable_state\n"
        "from training.run import train_stage\n"
        "from training.trainer import VisualCLATrainer\n"
        "train = VisualCLATrainer.train\n"
        "def train_and_keep_weights(self, *a, **k):  # each rank's replica after training\n"
        "    out = train(self, *a, **k)\n"
        "    state = trainable_state(self.accelerator.unwrap_model(self.model))\n"
        f"    save_file(state, str(Path({str(tmp_path)!r}) / f\"weights-{{os.environ['RANK']}}.safetensors\"))\n"
        "    return out\n"
        "VisualCLATrainer.train = train_and_keep_weights\n"
        f"m = train_stage(model_cfg(), 'stage1', stage(max_steps=2, save_steps=10), Path({str(shards)!r}), "
        f"Path({str(tmp_path / 'train' / 'stage1')!r}))\n"
        f"out = Path({str(tmp_path)!r}) / f\"metrics-{{os.environ['RANK']}}.json\"\n"
        "out.write_text(json.dumps({k: m[k] for k in ('steps', 'world_size', 'losses', 'batches_per_rank')}))\n"
    )
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(port), str(script)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads((tmp_path / f"metrics-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(m["steps"] == 2 and m["world_size"] == 2 for m in metrics)
    assert metrics[0]["losses"] == metrics[1]["losses"]  # the logged loss is the mean over ranks
    from safetensors.torch import load_file

    w0, w1 = (load_file(str(tmp_path / f"weights-{rank}.safetensors")) for rank in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) > 0
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    lora_b = [w0[k] for k in w0 if "lora_B" in k]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # LoRA B starts at zero: training moved it
    assert (tmp_path / "train" / "stage1" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_vcla_train_under_torchrun_trains_both_stages_without_prefect(tmp_path):
    """`torchrun -m pipelines.cli train`: every rank runs the train stage itself (no Prefect flow
    per rank); stage 1 builds its feature cache split over the ranks, stage 2 starts from it."""
    import socket

    run = tmp_path / "run"
    write_synthetic_shards(run / "render", num_images=32, row_group_rows=8)
    overrides = ["model.vision.path=null", "model.vision.image_size=32", f"model.vision.init={json.dumps(VISION)}",
                 f"model.llm.init={json.dumps(LLM)}"]
    for s in ("stage1", "stage2"):
        overrides += [f"stages.{s}.max_steps=2", f"stages.{s}.batch_size=4"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "pipelines.cli", "train", "--run-dir", str(run)] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for s in ("stage1", "stage2"):
        metrics = json.loads((run / "train" / s / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["steps"] == 2
    assert json.loads((run / "train" / "stage2" / "stage.json").read_text())["init_from"] == "../stage1"
    assert len(list((run / "train" / "stage1" / "feature_cache").glob("*/*.safetensors"))) == 4  # both ranks' units
    assert proc.stdout.count("[train] stage2: trained") == 2  # one line per rank
