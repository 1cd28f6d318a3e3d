"""The demo corpus's pretrained vision encoder: a real CLIPVisionModel folder that learned cells."""

from __future__ import annotations

import random

import pytest
from transformers import CLIPImageProcessor, CLIPVisionModel

from pipelines.demo.corpus import generate_demo
from pipelines.demo.scenes import sample_scene
from pipelines.demo.vision import EMPTY_SHAPE, cell_labels, pretrain_vision_encoder
from pipelines.recipe import DemoConfig, DemoVisionConfig

SMALL = DemoVisionConfig(image_size=48, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, epochs=25, lr=3e-3,
                         batch_size=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision") / "corpus"
    manifest = generate_demo(out, DemoConfig(num_images=160, seed=3, vision_encoder=SMALL))
    return out, manifest


def test_encoder_is_a_safetensors_clip_folder_that_from_pretrained_loads(corpus):
    out, manifest = corpus
    folder = out / "vision_encoder"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt*"))
    model = CLIPVisionModel.from_pretrained(folder)
    assert (model.config.image_size, model.config.patch_size, model.config.hidden_size) == (48, 8, 32)
    processor = CLIPImageProcessor.from_pretrained(folder)
    assert processor.crop_size == {"height": 48, "width": 48}
    assert "vision_encoder/model.safetensors" in manifest["files"]


def test_encoder_saw_only_training_images_and_scores_on_heldout(corpus):
    _, manifest = corpus
    counts = manifest["counts"]
    assert counts["vision_encoder"]["train_images"] == counts["train_images"] == 160 - 16
    # Scored on occupied cells of held-out images: predicting the majority class ("empty") scores 0,
    # a random colour 0.17. Shape needs the full corpus (3,000 images) and is not asserted here.
    assert counts["vision_encoder"]["heldout_cell_color_accuracy"] > 0.6


def test_cell_labels_follow_the_scene_grid():
    scene = sample_scene(5, random.Random("0:scene:5"))
    shapes, colours = cell_labels(scene)
    assert sum(k != EMPTY_SHAPE for k in shapes) == len(scene.shapes)
    for s in scene.shapes:
        assert shapes[s.cell[0] * 3 + s.cell[1]] == s.kind and colours[s.cell[0] * 3 + s.cell[1]] == s.color


def test_patch_grid_must_split_into_three_by_three_cells(tmp_path):
    with pytest.raises(ValueError, match="divisible by 3"):
        pretrain_vision_encoder(tmp_path, [], [], tmp_path / "out", DemoVisionConfig(image_size=64, patch_size=16), 0)


def test_saved_encoder_features_are_unit_scale_and_rescaling_keeps_post_layernorm_outputs(corpus):
    """The demo recipe feeds the connector the raw last hidden state (post_layernorm: false, so the model
    exports to llava-hf): the encoder is saved with its residual stream scaled to std ~1 (it was ~5.6,
    and the MLP connector then learned colour-shape binding far worse: 0.48 vs 0.87 held-out)."""
    import torch
    from transformers import CLIPVisionConfig

    from pipelines.demo.vision import unit_scale_features

    out, manifest = corpus
    folder = out / "vision_encoder"
    model, processor = CLIPVisionModel.from_pretrained(folder).eval(), CLIPImageProcessor.from_pretrained(folder)
    from PIL import Image
    images = [Image.open(p).convert("RGB") for p in sorted((out / "images").glob("*.jpg"))[:32]]
    with torch.no_grad():
        h = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).last_hidden_state
    assert 0.8 < h.std().item() < 1.25
    assert manifest["counts"]["vision_encoder"]["feature_scale"] > 0

    torch.manual_seed(0)
    big = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, image_size=48, patch_size=8)).eval()
    with torch.no_grad():
        for layer in big.encoder.layers:
            layer.mlp.fc2.weight.mul_(20)
        x = torch.randn(4, 3, 48, 48)
        before = big(pixel_values=x).last_hidden_state
        scale = unit_scale_features(big, x)
        after = big(pixel_values=x).last_hidden_state
    assert abs(after.std().item() - 1) < 0.01 and scale < 0.5
    torch.testing.assert_close(after, before * scale, atol=5e-3, rtol=1e-3)
    torch.testing.assert_close(big.post_layernorm(after), big.post_layernorm(before), atol=5e-3, rtol=1e-3)
