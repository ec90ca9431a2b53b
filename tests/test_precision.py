"""The recipe vocabulary (omnigen2_fp8.precision) and the unpadded FP8 arm as an Fp8Config policy."""
from __future__ import annotations

import pytest
import torch

from omnigen2_fp8.caching import OFFICIAL_TEACACHE_RESCALE, TaylorSeerConfig, TeaCacheConfig
from omnigen2_fp8.checkpoints import load_transformer, save_transformer
from omnigen2_fp8.fp8 import Fp8Config, Fp8ConfigError, Fp8Linear, Kernel, quantize_fp8
from omnigen2_fp8.precision import BASES, PARTS, RecipeError, device_mismatches, parse_recipe
from omnigen2_fp8.transformer import OmniGen2Transformer, TransformerConfig


def tiny_model() -> OmniGen2Transformer:
    torch.manual_seed(0)
    return OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()


def inputs():
    g = torch.Generator().manual_seed(5)
    latents = [torch.randn(16, 8, 8, generator=g)]
    refs = [[torch.randn(16, 4, 6, generator=g)]]
    return latents, torch.tensor([0.4]), torch.randn(1, 5, 64, generator=g), torch.ones(1, 5, dtype=torch.long), refs


@pytest.mark.parametrize("text, name", [
    ("bf16", "bf16"), ("fp8", "fp8"), ("fp8-nopad", "fp8-nopad"), (" fp8+teacache ", "fp8+teacache"),
    ("fp8+teacache:0.05", "fp8+teacache"), ("bf16+teacache:0.1", "bf16+teacache:0.1"),
    ("fp8+taylorseer", "fp8+taylorseer"), ("bf16+teacache:rel_l1_thresh=0.1", "bf16+teacache:0.1"),
    ("fp8+fp8attn+taylorseer", "fp8+taylorseer+fp8attn"),
    ("fp8+taylorseer:max_order=4", "fp8+taylorseer"),
    ("fp8+taylorseer:fresh_threshold=4,first_enhance=3", "fp8+taylorseer:first_enhance=3,fresh_threshold=4"),
])
def test_canonical_names(text, name):
    assert parse_recipe(text).name == name
    assert parse_recipe(name) == parse_recipe(text)  # the canonical name parses back to the same recipe


def test_settings_and_records():
    recipe = parse_recipe("fp8-nopad+teacache:0.2")
    assert recipe.step_cache == TeaCacheConfig(rel_l1_thresh=0.2)  # the caching module's own settings
    assert recipe.fp8_config() == Fp8Config(misaligned="reference")
    assert recipe.fp8_config(kernel="torch-reference").kernel == Kernel.TORCH_REFERENCE
    record = recipe.to_dict()
    assert record["name"] == "fp8-nopad+teacache:0.2" and record["step_cache"] == {
        "method": "teacache", "rel_l1_thresh": 0.2, "rescale_coefficients": list(OFFICIAL_TEACACHE_RESCALE)}
    assert record["fp8"]["misaligned"] == "reference"
    assert parse_recipe("bf16").fp8_config(kernel="cublas-padded") is None
    assert parse_recipe("bf16").to_dict()["fp8"] is None
    assert parse_recipe("fp8+taylorseer").step_cache == TaylorSeerConfig()  # one source of defaults
    assert parse_recipe("fp8+taylorseer").to_dict()["step_cache"] == {"method": "taylorseer", "first_enhance": 5,
                                                                      "fresh_threshold": 3, "max_order": 4}
    assert parse_recipe("bf16+teacache").step_cache == TeaCacheConfig()
    assert set(BASES) == {"bf16", "fp8", "fp8-nopad"} and {"teacache", "taylorseer"} <= set(PARTS)


@pytest.mark.parametrize("text, words", [
    ("fp9", ["'fp9'", "did you mean 'fp8'"]),
    ("fp8+teachache", ["'teachache'", "did you mean 'teacache'"]),
    ("fp8+teacache+taylorseer", ["two step_cache parts"]),
    ("fp8+teacache:0", ["rel_l1_thresh must be a positive number"]),
    ("fp8+teacache:fast", ["rel_l1_thresh='fast' is not a number"]),
    ("fp8+taylorseer:2", ["takes field=value settings", "taylorseer:first_enhance=5"]),
    ("fp8+taylorseer:max_ordr=2", ["no setting 'max_ordr'", "did you mean 'max_order'"]),
    ("fp8+taylorseer:max_order=1.5", ["max_order='1.5' is not an int"]),
    ("fp8+taylorseer:first_enhance=0", ["first_enhance must be an integer >= 1"]),
    ("", ["recipe"]),
    ("bf16+fp8attn", ["'fp8attn' needs an FP8 base", "fp8+fp8attn"]),
    ("fp8+fp8attn:on", ["fp8attn takes exclude_steps=RANGES", "fp8attn:exclude_steps=0:3,-2:"]),
])
def test_bad_recipes_name_the_problem(text, words):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_fp8attn_is_an_fp8_config_option():
    recipe = parse_recipe("fp8-nopad+fp8attn")
    assert recipe.fp8_config() == Fp8Config(misaligned="reference", attention="fp8")
    assert recipe.fp8_config(kernel="torch-reference").attention == "fp8"  # overrides keep the parts
    assert recipe.to_dict()["fp8"]["attention"] == "fp8"
    assert recipe.to_dict()["attention"] == {"attention": "fp8", "exclude_steps": []}
    assert parse_recipe("fp8").fp8_config().attention == "bf16"


def test_with_step_cache_replaces_the_slot():
    recipe = parse_recipe("fp8+teacache:0.1")
    assert recipe.with_step_cache(TaylorSeerConfig()) == parse_recipe("fp8+taylorseer")
    assert recipe.with_step_cache(None) == parse_recipe("fp8")
    assert parse_recipe("bf16").with_step_cache(TeaCacheConfig(0.3)).name == "bf16+teacache:0.3"


def test_unpadded_arm_runs_misaligned_layers_on_the_reference_kernel():
    padded, unpadded = tiny_model(), tiny_model()
    config = parse_recipe("fp8-nopad").fp8_config()
    quantize_fp8(padded, Fp8Config(kernel="torch-reference"))
    quantize_fp8(unpadded, config)
    layers = {n: m for n, m in unpadded.named_modules() if isinstance(m, Fp8Linear)}
    assert layers and all((m.in_padded, m.out_padded) == (m.in_features, m.out_features) for m in layers.values())
    for name, m in layers.items():
        aligned = m.in_features % 16 == 0 and m.out_features % 16 == 0
        assert m.kernel == (Kernel.AUTO if aligned else Kernel.TORCH_REFERENCE), name
    assert any(m.kernel == Kernel.TORCH_REFERENCE for m in layers.values())  # tiny: hidden 120 is misaligned
    # Zero padding changes no sum: on the emulated path (auto on a CPU) both arms compute the same numbers.
    with torch.no_grad():
        for a, b in zip(padded(*inputs()), unpadded(*inputs())):
            torch.testing.assert_close(a, b)


def test_unpadded_checkpoint_round_trip(tmp_path):
    model = tiny_model()
    quantize_fp8(model, parse_recipe("fp8-nopad").fp8_config())
    loaded = load_transformer(save_transformer(model, tmp_path / "transformer"))
    for name, m in model.named_modules():
        if isinstance(m, Fp8Linear):
            other = loaded.get_submodule(name)
            assert (other.in_padded, other.out_padded, other.kernel) == (m.in_padded, m.out_padded, m.kernel), name
    with torch.no_grad():
        for a, b in zip(model(*inputs()), loaded(*inputs())):
            torch.testing.assert_close(a, b)


def test_misaligned_error_policy_names_the_layer():
    model = tiny_model()
    with pytest.raises(Fp8ConfigError, match=r"linear \S+\.attn\.\S+ has K x N = 120 x \d+, not multiples of 16"):
        quantize_fp8(model, Fp8Config(misaligned="error"))
    assert not any(isinstance(m, Fp8Linear) for m in model.modules())  # refused before any swap
    with pytest.raises(Fp8ConfigError, match="misaligned"):
        Fp8Config(misaligned="skip")


def pretend_gpu(monkeypatch, capability):
    """This machine seen as one CUDA GPU of `capability` (the checks read only these three answers)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"a GPU of capability {capability}")


def test_recipes_a_gpu_cannot_run_as_named_are_named(monkeypatch):
    arms = ["bf16", "fp8", "fp8+fp8attn:exclude_steps=0:2"]
    assert device_mismatches(arms, "cpu") == {}  # emulated there
    pretend_gpu(monkeypatch, (8, 0))  # no FP8 tensor cores
    found = device_mismatches(arms, "cuda")
    assert set(found) == {"fp8", "fp8+fp8attn:exclude_steps=0:2"}
    assert "compute capability 8.0; FP8 tensor cores need 8.9" in found["fp8"]
    pretend_gpu(monkeypatch, (8, 9))  # FP8 GEMMs, but not cuDNN's FP8 attention (Hopper and newer)
    found = device_mismatches(arms, "cuda")
    assert list(found) == ["fp8+fp8attn:exclude_steps=0:2"]
    assert "FP8 attention cannot run here" in found["fp8+fp8attn:exclude_steps=0:2"]
    assert "needs Hopper (9.0) or newer" in found["fp8+fp8attn:exclude_steps=0:2"]


@pytest.mark.gpu
def test_a_hopper_gpu_with_cudnn_runs_every_recipe_as_named():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("cuDNN's FP8 attention needs Hopper or newer")
    pytest.importorskip("cudnn")
    arms = ["bf16", "fp8", "fp8+fp8attn", "fp8+fp8attn:exclude_steps=0:2"]
    assert device_mismatches(arms, "cuda") == {}
