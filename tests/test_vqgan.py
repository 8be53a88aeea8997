"""The MaskGIT VQGAN tokenizer (``tokenizer.kind: pretrained``).

The published checkpoint cannot be downloaded here, so a stand-in is generated from the
documented key layout (``ARCH_TABLE`` below, expanded by the port's naming rules) with random
values, independently of the model code; loading it with ``strict=True`` is what proves the module
tree matches the checkpoint format.

What "encoding decoded tokens is stable" can honestly mean with random weights: a random decoder
followed by a random encoder is not an autoencoder, so ``encode(decode(t)) == t`` has no reason to
hold, and iterating it need not reach a fixed point in one step either (asserting that would test
the seed, not the code). What the pipeline relies on, and what is tested, is:

* exactness: when the encoder's latents coincide with codebook entries, encode returns exactly
  those entries' indices in row-major order, and decoding those tokens feeds the decoder exactly
  the encoder's latents (so encode and decode agree on the grid layout);
* determinism and batch invariance: re-encoding decoded images gives identical tokens on repeated
  runs and whether an image is encoded alone or inside a batch (multi-process tokenisation and
  resumable stages depend on it).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.tokenizer import base, registry, vqgan
from pipeline.tokenizer.vqgan import VQGANTokenizer, load_pretrained_vqgan

# The checkpoint's modules in state-dict order: name, kind, in, out. Expansion rules (the port's):
#   conv3 / conv3b: 3x3 conv without / with bias;  conv1b: 1x1 conv with bias;  norm: GroupNorm;
#   res: norm1(in), conv1 (out, in, 3, 3), norm2(out), conv2 (out, out, 3, 3), all convs bias-free,
#        plus nin_shortcut (out, out, 1, 1) when in != out;  emb: embedding (in rows, out dims).
ARCH_TABLE = """
encoder.conv_in              conv3    3  128
encoder.down.0.block.0       res    128  128
encoder.down.0.block.1       res    128  128
encoder.down.1.block.0       res    128  128
encoder.down.1.block.1       res    128  128
encoder.down.2.block.0       res    128  256
encoder.down.2.block.1       res    256  256
encoder.down.3.block.0       res    256  256
encoder.down.3.block.1       res    256  256
encoder.down.4.block.0       res    256  512
encoder.down.4.block.1       res    512  512
encoder.mid.block_1          res    512  512
encoder.mid.block_2          res    512  512
encoder.norm_out             norm   512  512
encoder.conv_out             conv1b 512  256
decoder.conv_in              conv3b 256  512
decoder.mid.block_1          res    512  512
decoder.mid.block_2          res    512  512
decoder.up.0.block.0         res    128  128
decoder.up.0.block.1         res    128  128
decoder.up.1.block.0         res    256  128
decoder.up.1.block.1         res    128  128
decoder.up.1.upsample.conv   conv3b 128  128
decoder.up.2.block.0         res    256  256
decoder.up.2.block.1         res    256  256
decoder.up.2.upsample.conv   conv3b 256  256
decoder.up.3.block.0         res    512  256
decoder.up.3.block.1         res    256  256
decoder.up.3.upsample.conv   conv3b 256  256
decoder.up.4.block.0         res    512  512
decoder.up.4.block.1         res    512  512
decoder.up.4.upsample.conv   conv3b 512  512
decoder.norm_out             norm   128  128
decoder.conv_out             conv3b 128    3
quantize.embedding           emb   1024  256
"""
SPEC_KEYS = 168
SPEC_PARAMS = 54_515_587

TINY = {
    "ch": 32,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "z_channels": 8,
    "codebook_size": 96,
    "image_size": 16,
}


def spec_layout() -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every checkpoint entry, in order, expanded from ARCH_TABLE."""
    layout: list[tuple[str, tuple[int, ...]]] = []
    for row in ARCH_TABLE.strip().splitlines():
        name, kind, cin, cout = row.split()
        n_in, n_out = int(cin), int(cout)
        if kind == "res":
            layout += [
                (f"{name}.norm1.weight", (n_in,)),
                (f"{name}.norm1.bias", (n_in,)),
                (f"{name}.conv1.weight", (n_out, n_in, 3, 3)),
                (f"{name}.norm2.weight", (n_out,)),
                (f"{name}.norm2.bias", (n_out,)),
                (f"{name}.conv2.weight", (n_out, n_out, 3, 3)),
            ]
            if n_in != n_out:
                layout.append((f"{name}.nin_shortcut.weight", (n_out, n_out, 1, 1)))
        elif kind in ("conv3", "conv3b", "conv1b"):
            size = 1 if kind == "conv1b" else 3
            layout.append((f"{name}.weight", (n_out, n_in, size, size)))
            if kind.endswith("b"):
                layout.append((f"{name}.bias", (n_out,)))
        elif kind == "norm":
            layout += [(f"{name}.weight", (n_in,)), (f"{name}.bias", (n_in,))]
        elif kind == "emb":
            layout.append((f"{name}.weight", (n_in, n_out)))
        else:  # pragma: no cover - a typo in the table
            raise AssertionError(kind)
    return layout


def random_checkpoint(layout: list[tuple[str, tuple[int, ...]]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values with sane scales (unit-variance convs, norms near identity), key order kept."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in layout:
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        elif key.startswith("quantize."):
            state[key] = torch.randn(shape, generator=gen)
        elif ".norm" in key and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            state[key] = 0.1 * torch.randn(shape, generator=gen)
    return state


def layout_of(state: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in state.items()]


# ---------------------------------------------------------------------------------------------
# Full-size model: layout, strict loading, encode / decode at 256x256
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_state() -> dict[str, torch.Tensor]:
    return random_checkpoint(spec_layout())


@pytest.fixture(scope="module")
def full_model(spec_state, tmp_path_factory) -> VQGANTokenizer:
    path = tmp_path_factory.mktemp("vqgan") / "vqgan_jax_strongaug.ckpt"
    torch.save(spec_state, path)
    return load_pretrained_vqgan(path)


def test_spec_table_matches_documented_counts():
    layout = spec_layout()
    assert len(layout) == SPEC_KEYS
    assert len({key for key, _ in layout}) == SPEC_KEYS
    assert sum(math.prod(shape) for _, shape in layout) == SPEC_PARAMS


def test_default_architecture_has_the_checkpoint_layout_in_order():
    model = VQGANTokenizer()
    assert layout_of(model.state_dict()) == spec_layout()
    assert sum(p.numel() for p in model.parameters()) == SPEC_PARAMS
    assert (model.codebook_size, model.grid, model.channels, model.image_size) == (1024, (16, 16), 3, 256)


def test_checkpoint_loads_strictly_with_exact_values(full_model, spec_state):
    loaded = full_model.state_dict()
    assert list(loaded) == list(spec_state)
    assert all(torch.equal(loaded[key], value) for key, value in spec_state.items())
    assert not full_model.training


def test_checkpoint_nested_under_state_dict_loads(spec_state, full_model, tmp_path):
    path = tmp_path / "nested.ckpt"
    torch.save({"state_dict": spec_state, "epoch": 7}, path)
    nested = load_pretrained_vqgan(path)
    assert all(
        torch.equal(a, b) for a, b in zip(nested.state_dict().values(), full_model.state_dict().values())
    )


def test_full_size_decode_encode_shapes_ranges_and_stable_reencoding(full_model):
    tokens = torch.randint(0, 1024, (1, 256), generator=torch.Generator().manual_seed(1))
    decoded = full_model.decode(tokens)
    assert decoded.shape == (1, 3, 256, 256) and decoded.dtype == torch.float32
    assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    assert float(decoded.std()) > 0.0  # a real image, not a constant

    # 256x256 -> 16x16 tokens in [0, 1024).
    again = full_model.encode(decoded)
    assert again.shape == (1, 256) and again.dtype == torch.int64
    assert int(again.min()) >= 0 and int(again.max()) < 1024
    # Re-encoding is deterministic and batch-invariant: alone, twice in one batch, same tokens.
    batched = full_model.encode(torch.cat([decoded, decoded]))
    assert torch.equal(batched[0], again[0]) and torch.equal(batched[1], again[0])


def test_full_size_bad_checkpoint_lists_every_kind_of_difference(spec_state, tmp_path):
    state = dict(spec_state)
    removed = [key for key in state if key.startswith("decoder.up.0.")]  # 12 entries: list is capped
    for key in removed:
        del state[key]
    state["encoder.quant_conv.weight"] = torch.zeros(256, 256, 1, 1)
    state["quantize.embedding.weight"] = torch.zeros(512, 256)
    path = tmp_path / "bad.ckpt"
    torch.save(state, path)
    with pytest.raises(PipelineError) as info:
        load_pretrained_vqgan(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{len(removed)} missing: " in message and f"({len(removed)} in all)" in message
    assert all(key in message for key in removed[:8]) and removed[8] not in message
    assert "1 unexpected: encoder.quant_conv.weight" in message
    assert "quantize.embedding.weight (512, 256) (expected (1024, 256))" in message


# ---------------------------------------------------------------------------------------------
# Tiny model of the same family: exactness of the round trip, errors, save/load
# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def tiny() -> Iterator[VQGANTokenizer]:
    # Tiny convolutions are dominated by thread synchronisation: on a busy 2-core machine one
    # thread is ~50x faster than two. Restore the setting for the full-size tests.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield VQGANTokenizer(**TINY).eval()
    torch.set_num_threads(threads)


def test_tiny_architecture_follows_the_same_rules(tiny):
    keys = list(tiny.state_dict())
    assert tiny.grid == (8, 8) and tiny.seq_len == 64
    assert "encoder.down.1.block.0.nin_shortcut.weight" in keys  # 32 -> 64
    assert "decoder.up.0.block.0.nin_shortcut.weight" in keys  # 64 -> 32
    assert "decoder.up.1.upsample.conv.weight" in keys and "decoder.up.0.upsample.conv.weight" not in keys
    assert not any("attn" in key or "quant_conv" in key for key in keys)
    assert tuple(tiny.state_dict()["encoder.down.1.block.0.nin_shortcut.weight"].shape) == (64, 64, 1, 1)


# A functional forward written from the spec's rules over state-dict names, independent of the
# module tree: the tiny model must compute exactly this (avg-pool down, nearest up, eps 1e-6, ...).
def _ref_norm(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    return F.silu(F.group_norm(x, 32, state[f"{name}.weight"], state[f"{name}.bias"], eps=1e-6))


def _ref_block(state: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    h = F.conv2d(_ref_norm(state, f"{name}.norm1", x), state[f"{name}.conv1.weight"], padding=1)
    h = F.conv2d(_ref_norm(state, f"{name}.norm2", h), state[f"{name}.conv2.weight"], padding=1)
    shortcut = state.get(f"{name}.nin_shortcut.weight")
    return F.conv2d(h, shortcut) + h if shortcut is not None else x + h


def reference_encode(state: dict[str, torch.Tensor], x: torch.Tensor, levels: int, blocks: int):
    h = F.conv2d(x, state["encoder.conv_in.weight"], padding=1)
    for i in range(levels):
        for j in range(blocks):
            h = _ref_block(state, f"encoder.down.{i}.block.{j}", h)
        if i < levels - 1:
            h = F.avg_pool2d(h, 2)
    h = _ref_block(state, "encoder.mid.block_2", _ref_block(state, "encoder.mid.block_1", h))
    z = F.conv2d(
        _ref_norm(state, "encoder.norm_out", h),
        state["encoder.conv_out.weight"],
        state["encoder.conv_out.bias"],
    )
    cells = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    tokens = torch.cdist(cells.double(), state["quantize.embedding.weight"].double()).argmin(dim=1)
    return z, tokens.view(z.shape[0], -1)


def reference_decode(state: dict[str, torch.Tensor], z: torch.Tensor, levels: int, blocks: int):
    h = F.conv2d(z, state["decoder.conv_in.weight"], state["decoder.conv_in.bias"], padding=1)
    h = _ref_block(state, "decoder.mid.block_2", _ref_block(state, "decoder.mid.block_1", h))
    for i in reversed(range(levels)):
        for j in range(blocks):
            h = _ref_block(state, f"decoder.up.{i}.block.{j}", h)
        if i > 0:
            up = F.interpolate(h, scale_factor=2, mode="nearest")
            conv = f"decoder.up.{i}.upsample.conv"
            h = F.conv2d(up, state[f"{conv}.weight"], state[f"{conv}.bias"], padding=1)
    h = _ref_norm(state, "decoder.norm_out", h)
    return F.conv2d(h, state["decoder.conv_out.weight"], state["decoder.conv_out.bias"], padding=1).clamp(
        0, 1
    )


def test_tiny_forward_matches_the_spec_reference(tiny):
    state = random_checkpoint(layout_of(tiny.state_dict()), seed=7)
    tiny.load_state_dict(state, strict=True)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    levels, blocks = len(TINY["ch_mult"]), TINY["num_res_blocks"]
    with torch.no_grad():
        ref_z, ref_tokens = reference_encode(state, images, levels, blocks)
        torch.testing.assert_close(tiny.encode_latents(images), ref_z)
        tokens = tiny.encode(images)
        assert torch.equal(tokens, ref_tokens)
        ref_images = reference_decode(state, tiny.lookup_tokens(tokens), levels, blocks)
    torch.testing.assert_close(tiny.decode(tokens), ref_images)


def _residual_branch(block: vqgan.ResnetBlock, x: torch.Tensor) -> torch.Tensor:
    silu = torch.nn.functional.silu
    return block.conv2(silu(block.norm2(block.conv1(silu(block.norm1(x))))))


def test_nin_shortcut_is_applied_to_h_not_x():
    torch.manual_seed(0)
    block = vqgan.ResnetBlock(32, 64)
    x = torch.randn(2, 32, 4, 4)
    h = _residual_branch(block, x)
    torch.testing.assert_close(block(x), block.nin_shortcut(h) + h)
    same = vqgan.ResnetBlock(32, 32)
    assert same.nin_shortcut is None
    h = _residual_branch(same, x)
    torch.testing.assert_close(same(x), x + h)


def test_encode_returns_planted_codes_row_major_and_decode_feeds_them_back(tiny):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        latents = tiny.encode_latents(images)  # (2, 8, 8, 8)
        # Plant image 0's 64 cell vectors at shuffled codebook rows: row-major cell p -> code perm[p].
        perm = torch.randperm(tiny.codebook_size, generator=torch.Generator().manual_seed(3))[: tiny.seq_len]
        cells = latents[0].permute(1, 2, 0).reshape(tiny.seq_len, -1)
        tiny.quantize.embedding.weight[perm] = cells
    tokens = tiny.encode(images[:1])
    assert torch.equal(tokens[0], perm)
    # The decoder must receive exactly the encoder's latents, cell for cell.
    assert torch.equal(tiny.lookup_tokens(tokens), latents[:1])
    assert torch.equal(tiny.decode(tokens), tiny.decode_latents(latents[:1]))


def test_quantiser_matches_brute_force_across_chunks(tiny, monkeypatch):
    gen = torch.Generator().manual_seed(4)
    vectors = torch.randn(1000, 8, generator=gen) * 2.0
    brute = ((vectors[:, None, :] - tiny.quantize.embedding.weight[None]) ** 2).sum(-1).argmin(dim=1)
    monkeypatch.setattr(vqgan, "QUANTIZE_CHUNK_ROWS", 7)  # many blocks and a ragged last one
    assert torch.equal(tiny.quantize.nearest(vectors), brute)
    # Every code maps back to itself.
    codes = tiny.quantize.embedding.weight.detach()
    assert torch.equal(tiny.quantize.nearest(codes), torch.arange(tiny.codebook_size))


def test_tiny_decode_range_and_deterministic_reencoding(tiny):
    tokens = torch.randint(0, tiny.codebook_size, (3, 64), generator=torch.Generator().manual_seed(5))
    images = tiny.decode(tokens)
    assert images.shape == (3, 3, 16, 16)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert torch.equal(tiny.decode(tokens), images)
    first = tiny.encode(images)
    assert torch.equal(tiny.encode(images), first)
    assert torch.equal(torch.cat([tiny.encode(images[i : i + 1]) for i in range(3)]), first)


def test_wrong_inputs_are_rejected(tiny):
    with pytest.raises(PipelineError, match=r"data\.image_size"):
        tiny.encode(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 96\)"):
        tiny.decode(torch.full((1, 64), 96))
    with pytest.raises(ValueError, match="shape"):
        tiny.decode(torch.zeros(1, 63, dtype=torch.int64))
    with pytest.raises(ValueError, match="multiples of 32"):
        VQGANTokenizer(ch=16)


@pytest.mark.parametrize("nested", [False, True])
def test_tiny_checkpoint_loads_with_arch_overrides(tiny, tmp_path, nested):
    path = tmp_path / "tiny.ckpt"
    state = tiny.state_dict()
    torch.save({"state_dict": state} if nested else state, path)
    loaded = load_pretrained_vqgan(path, **TINY)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), state.values()))


def test_missing_checkpoint_file(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(PipelineError, match=r"nope\.ckpt not found.*tokenizer\.checkpoint"):
        load_pretrained_vqgan(missing)


def test_unreadable_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="cannot be read"):
        load_pretrained_vqgan(garbage)
    a_list = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(PipelineError, match="holds a list, not a state dict"):
        load_pretrained_vqgan(a_list)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("missing", "1 missing: quantize.embedding.weight"),
        ("extra", "1 unexpected: decoder.mid.attn_1.q.weight"),
        ("shape", "1 wrong shape: decoder.conv_out.bias (4,) (expected (3,))"),
        ("not_tensor", "1 not a tensor: encoder.conv_out.bias (int)"),
    ],
)
def test_tiny_bad_checkpoints_name_the_difference(tiny, tmp_path, edit, expected):
    state = dict(tiny.state_dict())
    if edit == "missing":
        del state["quantize.embedding.weight"]
    elif edit == "extra":
        state["decoder.mid.attn_1.q.weight"] = torch.zeros(64, 64, 1, 1)
    elif edit == "shape":
        state["decoder.conv_out.bias"] = torch.zeros(4)
    else:
        state["encoder.conv_out.bias"] = 3
    path = tmp_path / "bad.ckpt"
    torch.save(state, path)
    with pytest.raises(PipelineError) as info:
        load_pretrained_vqgan(path, **TINY)
    assert expected in str(info.value)
    assert str(info.value).count("\n") == 1  # exactly one category of difference reported


def test_save_and_load_tokenizer_round_trip(tiny, tmp_path):
    assert registry.TOKENIZERS["pretrained"] is VQGANTokenizer
    fingerprint = base.save_tokenizer(tiny, tmp_path / "tok")
    config = (tmp_path / "tok" / base.CONFIG_FILE).read_text()
    assert '"kind": "pretrained"' in config
    restored = registry.load_tokenizer(tmp_path / "tok")
    assert isinstance(restored, VQGANTokenizer)
    assert restored.init_args() == tiny.init_args() == {**TINY, "channels": 3}
    assert base.tokenizer_fingerprint(tmp_path / "tok") == fingerprint
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    tokens = tiny.encode(images)
    assert torch.equal(restored.encode(images), tokens)
    assert torch.equal(restored.decode(tokens), tiny.decode(tokens))
