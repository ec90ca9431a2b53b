"""The OmniGen2 transformer: golden parity, shape coverage, checkpoint round trips and error messages."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from omnigen2_fp8 import OmniGen2Transformer, TransformerConfig
from omnigen2_fp8.checkpoints import load_transformer, save_transformer
from omnigen2_fp8.loading import CheckpointMismatchError, CheckpointNotFoundError
from omnigen2_fp8.transformer import ConfigError

from golden_cases import find_case, transformer_cases


def load_case(case: Path):
    io = load_file(str(case / "io.safetensors"))
    batch = io["text_hidden_states"].shape[0]
    latents = [io[f"latent.{i}"] for i in range(batch)]
    refs = []
    for i in range(batch):
        names = sorted((k for k in io if k.startswith(f"ref.{i}.")), key=lambda k: int(k.rsplit(".", 1)[1]))
        refs.append([io[k] for k in names] or None)
    expected = [io[f"output.{i}"] for i in range(batch)]
    return latents, io["timestep"], io["text_hidden_states"], io["text_attention_mask"], refs, expected


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    return ((out.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def test_golden_cases_exist(golden_dir):
    assert len(transformer_cases(golden_dir)) >= 2


@pytest.mark.parametrize("case", transformer_cases(), ids=lambda p: p.name)
def test_golden_parity(case):
    model = load_transformer(case / "transformer", dtype=torch.float32)
    latents, t, text, mask, refs, expected = load_case(case)
    with torch.no_grad():
        out = model(latents, t, text, mask, refs)
    for o, e in zip(out, expected, strict=True):
        assert o.shape == e.shape
        assert relative_error(o, e) < 1e-4


def test_every_golden_case(golden_dir):
    """Any further case of the same format placed beside the shipped ones is checked too."""
    for case in transformer_cases(golden_dir):
        model = load_transformer(case, dtype=torch.float32)  # top-level folder works too
        latents, t, text, mask, refs, expected = load_case(case)
        with torch.no_grad():
            out = model(latents, t, text, mask, refs)
        assert max(relative_error(o, e) for o, e in zip(out, expected)) < 1e-4, case.name


@pytest.fixture(scope="module")
def tiny_model() -> OmniGen2Transformer:
    torch.manual_seed(0)
    model = OmniGen2Transformer(TransformerConfig.from_name("tiny")).eval()
    with torch.no_grad():  # non-trivial norms and embeddings, so every parameter matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def random_inputs(shapes, refs_hw, text_lens, seed=0, channels=16, feat=64):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(channels, h, w, generator=g) for h, w in shapes]
    refs = [[torch.randn(channels, h, w, generator=g) for h, w in r] if r else None for r in refs_hw]
    t_max = max(text_lens)
    text = torch.randn(len(shapes), t_max, feat, generator=g)
    mask = torch.zeros(len(shapes), t_max, dtype=torch.long)
    for i, n in enumerate(text_lens):
        mask[i, :n] = 1
    t = torch.rand(len(shapes), generator=g)
    return latents, t, text, mask, refs


def run_single(model, latents, t, text, mask, refs, i):
    n = int(mask[i].sum())
    return model([latents[i]], t[i:i + 1], text[i:i + 1, :n], mask[i:i + 1, :n], [refs[i]])[0]


def test_mixed_batch_equals_samples_run_alone(tiny_model):
    """Padding and masks must not leak: a ragged batch gives each sample what it gets alone (no padding at all)."""
    shapes = [(8, 8), (6, 12), (4, 4), (10, 6)]
    refs_hw = [[(8, 8), (6, 10), (4, 4)], None, [(12, 4)], [(4, 6), (4, 6), (2, 2), (6, 6), (8, 2)]]
    latents, t, text, mask, refs = random_inputs(shapes, refs_hw, text_lens=[7, 11, 3, 9])
    with torch.no_grad():
        batched = tiny_model(latents, t, text, mask, refs)
        for i in range(len(shapes)):
            alone = run_single(tiny_model, latents, t, text, mask, refs, i)
            assert batched[i].shape == latents[i].shape
            assert relative_error(batched[i], alone) < 1e-5


def test_float32_matches_float64_reference(tiny_model):
    """Higher-precision reference: the same weights in float64 agree with float32 to float32 rounding."""
    latents, t, text, mask, refs = random_inputs([(8, 8), (6, 6)], [[(8, 8), (4, 6)], None], [5, 8], seed=3)
    model64 = OmniGen2Transformer(tiny_model.config).double().eval()
    model64.load_state_dict(tiny_model.state_dict())
    with torch.no_grad():
        out32 = tiny_model(latents, t, text, mask, refs)
        out64 = model64([x.double() for x in latents], t.double(), text.double(), mask,
                        [[r.double() for r in rs] if rs else None for rs in refs])
    for a, b in zip(out32, out64):
        assert relative_error(a, b) < 1e-5


def test_tensor_input_returns_tensor(tiny_model):
    latents, t, text, mask, _ = random_inputs([(8, 8), (8, 8)], [None, None], [4, 6], seed=1)
    with torch.no_grad():
        out = tiny_model(torch.stack(latents), t, text, mask)
        listed = tiny_model(latents, t, text, mask)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 16, 8, 8)
    assert torch.allclose(out, torch.stack(listed))


def test_reference_images_change_the_output(tiny_model):
    latents, t, text, mask, refs = random_inputs([(8, 8)], [[(8, 8)]], [5], seed=2)
    with torch.no_grad():
        with_ref = tiny_model(latents, t, text, mask, refs)[0]
        without = tiny_model(latents, t, text, mask, None)[0]
    assert relative_error(with_ref, without) > 1e-3


def test_fused_projections_compute_the_same(tiny_model, tmp_path):
    latents, t, text, mask, refs = random_inputs([(8, 8), (6, 6)], [[(8, 8)], None], [5, 8], seed=4)
    fused = OmniGen2Transformer(tiny_model.config).eval()
    fused.load_state_dict(tiny_model.state_dict())
    fused.fuse_projections()
    assert fused.layers[0].attn.to_q is None and fused.layers[0].attn.to_qkv is not None
    assert fused.layers[0].feed_forward.linear_13.weight.shape == (2 * tiny_model.config.ffn_dim, 120)
    with torch.no_grad():
        a = tiny_model(latents, t, text, mask, refs)
        b = fused(latents, t, text, mask, refs)
    for x, y in zip(a, b):
        assert relative_error(x, y) < 1e-5
    save_transformer(fused, tmp_path / "transformer")  # saved back under the official names
    assert set(load_file(str(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"))) == \
        set(tiny_model.state_dict())


@pytest.mark.parametrize("shard_size", ["10GB", "200KB"])
def test_save_load_round_trip(tiny_model, tmp_path, shard_size):
    folder = save_transformer(tiny_model, tmp_path / "ckpt" / "transformer", max_shard_size=shard_size)
    if shard_size == "200KB":
        assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
        assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "OmniGen2Transformer2DModel" and config["hidden_size"] == 120
    loaded = load_transformer(tmp_path / "ckpt", dtype=torch.float32)
    for name, tensor in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    bf16 = load_transformer(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert all(p.device.type == "cpu" for p in bf16.parameters())


def test_bf16_forward_stays_close(golden_dir):
    case = find_case("transformer_batch", golden_dir)
    model = load_transformer(case / "transformer", dtype=torch.bfloat16)
    latents, t, text, mask, refs, expected = load_case(case)
    with torch.no_grad():
        out = model([x.bfloat16() for x in latents], t, text.bfloat16(), mask,
                    [[r.bfloat16() for r in rs] for rs in refs])
    assert max(relative_error(o.float(), e) for o, e in zip(out, expected)) < 5e-2


# ------------------------------------------------------------------------------------------------ errors
def test_missing_folder_names_what_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointNotFoundError, match="no local folder"):
        load_transformer("nobody-here/no-such-model")
    with pytest.raises(CheckpointNotFoundError, match="not a hub id"):
        load_transformer(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        load_transformer(tmp_path / "empty")


def copy_golden_transformer(golden_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "transformer"
    shutil.copytree(find_case("transformer_batch", golden_dir) / "transformer", dst)
    for f in dst.iterdir():
        f.chmod(0o644)
    return dst


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.pop("num_layers"), r"missing keys \['num_layers'\]"),
    (lambda c: c.update(hidden_dim=3), r"unknown keys \['hidden_dim'\]"),
    (lambda c: c.update(_class_name="UNet2DModel"), "another model"),
    (lambda c: c.update(num_attention_heads=7), "not divisible"),
])
def test_config_errors(golden_dir, tmp_path, edit, match):
    folder = copy_golden_transformer(golden_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=match):
        load_transformer(folder)


def test_tensor_mismatch_errors(golden_dir, tmp_path):
    folder = copy_golden_transformer(golden_dir, tmp_path)
    weights = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop("layers.1.attn.to_k.weight")
    tensors["layers.0.extra.weight"] = torch.zeros(2)
    tensors["x_embedder.weight"] = torch.zeros(120, 32)
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointMismatchError) as err:
        load_transformer(folder)
    message = str(err.value)
    assert "missing tensor(s): layers.1.attn.to_k.weight" in message
    assert "unexpected tensor(s): layers.0.extra.weight" in message
    assert "shape mismatch for x_embedder.weight: checkpoint has (120, 32), the config expects (120, 64)" in message


def test_missing_shard_error(tiny_model, tmp_path):
    folder = save_transformer(tiny_model, tmp_path / "transformer", max_shard_size="200KB")
    next(folder.glob("diffusion_pytorch_model-00002-*.safetensors")).unlink()
    with pytest.raises(CheckpointNotFoundError, match="shards that are missing"):
        load_transformer(folder)


def test_input_errors(tiny_model):
    latents, t, text, mask, refs = random_inputs([(8, 8), (8, 8)], [None, None], [4, 6])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        tiny_model(torch.zeros(16, 8, 8), t, text, mask)
    with pytest.raises(ValueError, match="channels"):
        tiny_model([torch.zeros(4, 8, 8)] * 2, t, text, mask)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        tiny_model([torch.zeros(16, 7, 8)] * 2, t, text, mask)
    with pytest.raises(ValueError, match="timestep must be"):
        tiny_model(latents, torch.zeros(3), text, mask)
    with pytest.raises(ValueError, match="text_hidden_states must be"):
        tiny_model(latents, t, text[:1], mask)
    with pytest.raises(ValueError, match="text_attention_mask must be"):
        tiny_model(latents, t, text, mask[:, :2])
    with pytest.raises(ValueError, match="right padded"):
        tiny_model(latents, t, text, mask.flip(1))
    with pytest.raises(ValueError, match="one list"):
        tiny_model(latents, t, text, mask, [None])
    six = [torch.zeros(16, 4, 4)] * 6
    with pytest.raises(ValueError, match="at most 5"):
        tiny_model(latents, t, text, mask, [six, None])


def test_rotary_forms_agree_and_rotate_adjacent_pairs():
    from omnigen2_fp8.rope import rotate_pairs_complex, rotate_pairs_real

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, 8, generator=g)
    angles = torch.randn(2, 5, 4, generator=g) * 50
    cos, sin = angles.cos(), angles.sin()
    a, b = rotate_pairs_complex(x, cos, sin), rotate_pairs_real(x, cos, sin)
    assert torch.allclose(a, b, atol=1e-6)
    # pair (0, 1) of head 0 rotated by angle[..., 0], computed by hand
    x0, x1, c, s = x[..., 0, 0], x[..., 0, 1], cos[..., 0], sin[..., 0]
    assert torch.allclose(a[..., 0, 0], x0 * c - x1 * s, atol=1e-6)
    assert torch.allclose(a[..., 0, 1], x0 * s + x1 * c, atol=1e-6)
    assert torch.allclose(a.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # rotations keep norms
