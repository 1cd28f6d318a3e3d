"""Session-wide test settings and shared fixtures.

Nothing here may reach the network: the hub and Prefect are pointed at temp folders/offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations phones home otherwise

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A 40-image demo corpus, generated once per test session (read-only for tests)."""
    from pipelines.demo.corpus import generate_demo
    from pipelines.recipe import DemoConfig

    out = tmp_path_factory.mktemp("demo") / "corpus"
    generate_demo(out, DemoConfig(num_images=40, seed=7))
    return out


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (prefect_test_harness), started once per test session and worker."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


# -- the web UI (tests/test_webui*.py): one tiny run folder and one server per test session ------------

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
WEBUI_LIMITS = {"max_bytes": 2 << 20, "max_pixels": 3_000_000}
"""The test server's upload limits: small, so a 2000 x 2000 image is already a bomb to it (Chromium's
fake webcam, 1920 x 1440, still passes)."""


def webui_model():
    """The web UI tests' tiny model: CLIP 1x32 at 32 px, MLP connector, LLaMA 1x48."""
    from training.config import ModelConfig

    return ModelConfig(
        vision={"kind": "clip", "image_size": 32, "init": {"hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}},
        connector={"kind": "mlp2x_gelu"},
        llm={"init": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 2,
                      "num_key_value_heads": 2, "max_position_embeddings": 256, "vocab_size": 500}})


@pytest.fixture(scope="session", name="webui_model")
def webui_model_fixture():
    return webui_model()


@pytest.fixture(scope="session")
def webui_run(tmp_path_factory) -> Path:
    """A run folder as the steps leave it, in miniature: render/ shards (row groups of 5 rows),
    train/stage1 (a tiny captioning model that answers in Chinese), rejected/ rows of two steps,
    a curation report picture and a held-out suite naming an image."""
    from PIL import Image

    from pipelines.core.rejects import RejectWriter
    from pipelines.core.stats import StepStats
    from training.config import StageConfig
    from training.run import train_stage
    from training.synthetic import draw, write_synthetic_shards

    run = tmp_path_factory.mktemp("webui") / "run"
    write_synthetic_shards(run / "render", num_images=24, row_group_rows=5)
    model = webui_model()
    # Captions ("一个红色的圆形。"): after 60 steps every answer is one, several tokens of Chinese to stream.
    stage = StageConfig(data="pretrain", template="none", max_steps=60, batch_size=8, max_length=160,
                        save_steps=60, warmup_ratio=0.0, lr={"default": 3e-3},
                        trainable={"connector": "full", "llm": "full"})
    train_stage(model, "stage1", stage, run / "render", run / "train" / "stage1")
    for step, reasons in (("curate", ("near_duplicate", "wrong_language", "wrong_language")), ("render", ("too_long",))):
        rejects = RejectWriter(run / step / "rejected", step, StepStats(step))
        for i, reason in enumerate(reasons):
            rejects.reject(source="synthetic", reason=reason, detail=f"{reason} #{i}", record_id=f"{step}-{i}",
                           location=f"synthetic.jsonl:{i + 1}")
    (run / "curate" / "report").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(run / "curate" / "report" / "image_sizes.png")
    (run / "demo-data" / "images").mkdir(parents=True)
    (run / "demo-data" / "images" / "000900.png").write_bytes(draw("蓝色", "三角形", seed=900))
    (run / "demo-data" / "heldout").mkdir()
    (run / "demo-data" / "heldout" / "eval_zh.jsonl").write_text(
        '{"image": "images/000900.png", "question": "三角形是什么颜色？"}\n', encoding="utf-8")
    return run


@pytest.fixture(scope="session")
def webui_server(webui_run):
    """`vcla webui`'s app on a free loopback port, serving `webui_run` (bound as the command binds it)."""
    import socket

    from pipelines.webui.app import WebUI, build_app, launch
    from pipelines.webui.safety import bind_settings
    from training.chat import ChatModel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    checkpoint = webui_run / "train" / "stage1"
    webui = WebUI(bot=ChatModel.load(checkpoint), run_dir=webui_run, checkpoint=checkpoint, **WEBUI_LIMITS)
    app = build_app(webui)
    url, _ = launch(app, webui, bind_settings(port=port), block=False)
    yield {"url": url, "webui": webui}
    app.close()
