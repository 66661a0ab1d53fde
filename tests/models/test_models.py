"""Model loading: built-in configs, safe checkpoints, custom configs, explicit random weights, offline hub."""

import json
from importlib import resources

import pytest
import torch
from safetensors.torch import save_file

from prtk.core.errors import PrtkInputError
from prtk.models import builtin_model_names, load_clip, read_state_dict


@pytest.fixture(scope="module")
def tiny():
    return load_clip("prtk-tiny", random_weights=True, seed=5)


def embed(clip):
    images = torch.linspace(-1, 1, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.inference_mode():
        return clip.model.encode_image(images)


def test_builtin_configs_are_listed_and_load():
    assert {"prtk-tiny", "prtk-tiny-avgpool"} <= set(builtin_model_names())
    clip = load_clip("prtk-tiny-avgpool", random_weights=True)
    assert clip.spec.image_size == 64 and clip.spec.patch_size == 8 and clip.spec.layers == 4
    assert clip.preprocess_config["size"] == (64, 64)
    assert clip.tokenizer(["a photo of a cat."]).shape == (1, 32)


def test_random_weights_are_seeded_and_only_used_when_asked(tiny):
    assert torch.equal(embed(tiny), embed(load_clip("prtk-tiny", random_weights=True, seed=5)))
    assert not torch.equal(embed(tiny), embed(load_clip("prtk-tiny", random_weights=True, seed=6)))
    with pytest.raises(PrtkInputError, match="no weights given for prtk-tiny"):
        load_clip("prtk-tiny")
    with pytest.raises(PrtkInputError, match="give one source of weights"):
        load_clip("prtk-tiny", random_weights=True, pretrained="openai")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_round_trip(tmp_path, tiny, suffix):
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in tiny.model.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_clip("prtk-tiny", checkpoint=path)
    assert torch.equal(embed(loaded), embed(tiny))
    assert loaded.weights_sha256 == tiny.weights_sha256
    assert loaded.weights == {"source": "checkpoint", "path": str(path)}


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": PrtkInputError("not a tensor")}, path)
    with pytest.raises(PrtkInputError, match=f"cannot read checkpoint {path}"):
        read_state_dict(path)


def test_custom_json_config(tmp_path):
    config = json.loads(resources.files("prtk.model_configs").joinpath("prtk-tiny.json").read_text())
    config["vision_cfg"].update(layers=2, width=64, head_width=32)
    path = tmp_path / "my-vit.json"
    path.write_text(json.dumps(config))
    clip = load_clip(None, config=path, random_weights=True)
    assert clip.name == "my-vit" and clip.spec.layers == 2 and clip.spec.width == 64


def test_offline_hub_gives_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, when the hub client loads
    with pytest.raises(PrtkInputError) as error:
        load_clip("ViT-B-32", pretrained="laion2b_s34b_b79k")
    message = str(error.value)
    assert "could not fetch weights ViT-B-32/laion2b_s34b_b79k" in message and "--checkpoint FILE" in message
    assert "\n" not in message


def test_unknown_pretrained_tag():
    with pytest.raises(PrtkInputError, match="unknown pretrained tag 'nonsense' for ViT-B-32"):
        load_clip("ViT-B-32", pretrained="nonsense")
