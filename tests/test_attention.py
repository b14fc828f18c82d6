import dataclasses
import sys

import pytest
import torch

from vidbooth.attention import (
    attention,
    attention_backend,
    available_backends,
    registered_backends,
    resolve_backend,
    set_attention_backend,
)
from vidbooth.errors import UserError


def _qkv(seed=0, lq=7, lk=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 3, lq, 8, generator=g), torch.randn(2, 3, lk, 8, generator=g), torch.randn(2, 3, lk, 8, generator=g))


def test_registry_lists_the_three_backends():
    assert registered_backends() == ["math", "sdpa", "xformers"]
    assert "sdpa" in available_backends("cpu") and "math" in available_backends("cpu")
    assert "xformers" not in available_backends("cpu")


_NON_MATH_BACKENDS = [b for b in available_backends(torch.device("cpu")) if b != "math"]


def test_some_non_math_backend_is_available():
    assert _NON_MATH_BACKENDS  # otherwise test_backend_matches_math compares nothing


@pytest.mark.parametrize("backend", _NON_MATH_BACKENDS)
def test_backend_matches_math(backend):
    q, k, v = _qkv()
    reference = attention(q, k, v, backend="math")
    assert torch.allclose(attention(q, k, v, backend=backend), reference, atol=1e-5)
    bool_mask = torch.rand(2, 1, 7, 5, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask[..., 0] = True  # every query keeps at least one key
    additive = torch.zeros(bool_mask.shape).masked_fill(~bool_mask, float("-inf"))
    ref_masked = attention(q, k, v, bool_mask, backend="math")
    assert not torch.allclose(ref_masked, reference, atol=1e-3)  # the mask matters
    assert torch.allclose(attention(q, k, v, bool_mask, backend=backend), ref_masked, atol=1e-5)
    assert torch.allclose(attention(q, k, v, additive, backend=backend), ref_masked, atol=1e-5)


def test_math_matches_explicit_softmax_formula():
    q, k, v = _qkv(lq=3, lk=3)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1) @ v
    assert torch.allclose(attention(q, k, v, backend="math"), expected, atol=1e-6)


def test_math_stays_finite_in_fp16_where_unscaled_scores_would_overflow():
    """q.k of 64-wide heads with activations near 40 is 102,400, past fp16's 65,504: scaling q first keeps it."""
    g = torch.Generator().manual_seed(3)
    q, k = 40 + torch.rand(1, 2, 4, 64, generator=g), 40 + torch.rand(1, 2, 4, 64, generator=g)
    v = torch.randn(1, 2, 4, 64, generator=g)
    half = attention(q.half(), k.half(), v.half(), backend="math")
    assert torch.isfinite(half).all()
    assert torch.allclose(half.float(), attention(q, k, v, backend="math"), atol=2e-2)


def test_math_with_additive_mask_matches_explicit_formula():
    q, k, v = _qkv(lq=7, lk=5)
    g = torch.Generator().manual_seed(2)
    additive = torch.randn(2, 1, 7, 5, generator=g)
    additive[..., 1] = float("-inf")  # key 1 is hidden from every query
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + additive, dim=-1) @ v
    got = attention(q, k, v, additive, backend="math")
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, attention(q, k, v, backend="math"), atol=1e-3)  # the mask matters


def test_over_one_key_attention_is_its_value_with_no_kernel_run(monkeypatch):
    """A 1-frame video's temporal attention: the softmax over one key is 1. Subject training spent about a fifth
    of its step in SDPA kernels there."""
    from vidbooth.attention import backends

    q, k, v = (x.requires_grad_() for x in _qkv(lk=1))
    expected = backends._math(q, k, v, None)
    calls = []
    sdpa = backends._REGISTRY["sdpa"]
    monkeypatch.setitem(backends._REGISTRY, "sdpa", dataclasses.replace(sdpa, fn=lambda *args: calls.append(args)))
    got = attention(q, k, v, backend="sdpa")
    assert calls == [] and got.shape == (2, 3, 7, 8) and torch.allclose(got, expected, atol=1e-6)
    (grad_v,) = torch.autograd.grad(got.sum(), v)
    assert torch.allclose(grad_v, torch.autograd.grad(expected.sum(), v)[0], atol=1e-6)  # 7 queries each: 7
    attention(q, k, v, torch.zeros(2, 1, 1, 1), backend="sdpa")  # with a mask the backend runs
    assert len(calls) == 1


def test_context_manager_selects_backend(monkeypatch):
    calls = []
    from vidbooth.attention import backends

    original = backends._REGISTRY["math"]
    monkeypatch.setitem(
        backends._REGISTRY, "math", backends.Backend("math", lambda *a: calls.append(1) or original.fn(*a), original.is_available, "")
    )
    q, k, v = _qkv()
    attention(q, k, v)
    assert calls == []
    with attention_backend("math"):
        attention(q, k, v)
    assert calls == [1]
    attention(q, k, v)  # the block's backend ends with it
    assert calls == [1] and backends._current.get() == "sdpa"


def test_resolution_and_errors(monkeypatch):
    """auto is xformers on CUDA when it is installed, else sdpa; names in any case (from $VIDBOOTH_ATTENTION)."""
    from vidbooth.attention import backends

    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("MATH", "cpu") == "math" and resolve_backend("", "cpu") == "sdpa"  # $VIDBOOTH_ATTENTION=
    xformers = dataclasses.replace(backends._REGISTRY["xformers"], is_available=lambda device: True)
    with monkeypatch.context() as installed:  # xformers installed: auto takes it on CUDA only
        installed.setitem(backends._REGISTRY, "xformers", xformers)
        assert resolve_backend("auto", "cpu") == "sdpa" and resolve_backend("auto") == "sdpa"
        assert resolve_backend("auto", "cuda") == "xformers"
    with pytest.raises(UserError, match="unknown attention backend 'flash'.*math, sdpa, xformers"):
        resolve_backend("flash", "cpu")
    with pytest.raises(UserError, match="cannot run on cpu.*choose math, sdpa"):
        resolve_backend("xformers", torch.device("cpu"))


@pytest.mark.parametrize("kernels", [True, False])
def test_xformers_built_for_another_torch_is_not_taken_on_cuda(tmp_path, monkeypatch, kernels):
    """`pip install 'vidbooth[cuda]'` can bring an xformers built for another torch: it imports (printing that its
    kernels could not load), so auto had chosen it on CUDA, where its first attention would fail."""
    package = tmp_path / "xformers"
    package.mkdir()
    (package / "__init__.py").write_text(f"_has_cpp_library = {kernels}\n")  # as xformers sets it at import
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "xformers", None)  # so that teardown removes the stand-in imported below
    monkeypatch.delitem(sys.modules, "xformers")
    assert resolve_backend("auto", "cpu") == "sdpa"
    assert resolve_backend("auto", "cuda") == ("xformers" if kernels else "sdpa")
    if not kernels:
        with pytest.raises(UserError, match="cannot run on cuda: .*kernels built for this torch.*choose math, sdpa"):
            resolve_backend("xformers", "cuda")


@pytest.mark.parametrize("family", ["unet3d", "animatediff"])
def test_whole_unet_forward_matches_math(tiny_backbones, family):
    bb = tiny_backbones[family]
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 4, 8, 8, generator=g)
    text = torch.randn(1, 32, 32, generator=g)
    outputs = {}
    try:
        for backend in available_backends(bb.device):
            set_attention_backend(bb.unet, backend, bb.device)
            with torch.no_grad():
                outputs[backend] = bb.unet_forward(latents, 500, text)
    finally:
        set_attention_backend(bb.unet, bb.attention_backend, bb.device)
    assert set(outputs) >= {"math", "sdpa"}
    for backend, out in outputs.items():
        assert torch.allclose(out, outputs["math"], atol=1e-5), backend


@pytest.fixture
def stand_in_xformers(monkeypatch):
    """A CPU stand-in for `xformers.ops.memory_efficient_attention` with the real one's contract: (B, L, h, D)
    inputs whose head size is a multiple of 8 (in half precision on Ampere and later GPUs; 4 in fp32), and a bias
    whose rows are aligned to 8 elements in memory (xformers refuses others: 'No operator found'). It checks the
    layout and the mask handling of vidbooth's xformers backend where xformers cannot run; the gpu test below runs
    the real one."""
    import types

    calls = []

    def memory_efficient_attention(q, k, v, attn_bias=None):
        assert q.dim() == k.dim() == v.dim() == 4 and q.shape[2] == k.shape[2] and k.shape[1] == v.shape[1]
        assert q.shape[-1] % 8 == 0 and v.shape[-1] % 8 == 0, "xformers: query.shape[-1] % 8 != 0"
        if attn_bias is not None:
            assert attn_bias.shape == (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
            assert attn_bias.stride(-2) % 8 == 0, "xformers: the bias's last dimension must be aligned to 8"
        calls.append(attn_bias is not None)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + (0 if attn_bias is None else attn_bias)
        return (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)

    ops = types.SimpleNamespace(memory_efficient_attention=memory_efficient_attention)
    monkeypatch.setitem(sys.modules, "xformers", types.SimpleNamespace(ops=ops))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    return calls


@pytest.mark.parametrize("lk", [5, 8, 77])
def test_the_xformers_backend_passes_layout_and_masks_as_xformers_takes_them(stand_in_xformers, lk):
    """(B, h, L, D) in and out; a boolean or additive mask of any broadcastable shape becomes a dense aligned bias."""
    from vidbooth.attention.backends import _xformers

    q, k, v = _qkv(lq=7, lk=lk)
    assert torch.allclose(_xformers(q, k, v), attention(q, k, v, backend="math"), atol=1e-5)
    keep = torch.rand(2, 1, 1, lk, generator=torch.Generator().manual_seed(2)) > 0.3
    keep[..., 0] = True
    for mask in (keep, torch.zeros(keep.shape).masked_fill(~keep, float("-inf")), keep.expand(2, 3, 7, lk)):
        assert torch.allclose(_xformers(q, k, v, mask), attention(q, k, v, keep, backend="math"), atol=1e-5)
    assert stand_in_xformers == [False, True, True, True]


def test_the_xformers_backend_passes_a_batch_over_its_limit_in_parts(stand_in_xformers, monkeypatch):
    """xformers fails from a batch of 65536 (8 AnimateDiff videos at 512x512 in temporal attention): such a batch
    goes through in parts of at most XFORMERS_MAX_BATCH, here lowered to 2, masks with them."""
    from vidbooth.attention import backends

    monkeypatch.setattr(backends, "XFORMERS_MAX_BATCH", 2)
    q, k, v = (torch.randn(5, 3, 7, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    keep = torch.rand(5, 1, 1, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    keep[..., 0] = True
    assert torch.allclose(backends._xformers(q, k, v), attention(q, k, v, backend="math"), atol=1e-5)
    assert torch.allclose(backends._xformers(q, k, v, keep), attention(q, k, v, keep, backend="math"), atol=1e-5)
    assert stand_in_xformers == [False] * 3 + [True] * 3  # 5 videos in parts of 2, 2 and 1, each time


def test_the_xformers_backend_passes_heads_xformers_cannot_take_to_sdpa(stand_in_xformers):
    """xformers' kernels take heads of a multiple of 8 values (in fp16 and bf16 on Ampere and later GPUs): nano's
    heads of 4, the tiny models' of 2 and 4, had failed on CUDA with 'No operator found' wherever xformers ran."""
    from vidbooth.attention.backends import _xformers

    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g) for _ in range(3))
    keep = torch.rand(2, 1, 1, 7, generator=g) > 0.3
    keep[..., 0] = True
    assert torch.allclose(_xformers(q, k, v), attention(q, k, v, backend="math"), atol=1e-5)
    assert torch.allclose(_xformers(q, k, v, keep), attention(q, k, v, keep, backend="math"), atol=1e-5)
    assert stand_in_xformers == []


def test_a_whole_animatediff_unet_runs_through_the_xformers_backend(stand_in_xformers, tiny_backbones, monkeypatch):
    """Its heads of 8 and 16 values through xformers' contract, its motion modules' heads of 2 and 4 through SDPA:
    the forward pass gives what `math` gives."""
    from vidbooth.attention import backends

    bb = tiny_backbones["animatediff"]
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 32, 32, generator=g)
    monkeypatch.setitem(backends._REGISTRY, "xformers",
                        dataclasses.replace(backends._REGISTRY["xformers"], is_available=lambda device: True))
    outputs = {}
    try:
        for backend in ("math", "xformers"):
            set_attention_backend(bb.unet, backend, bb.device)
            with torch.no_grad():
                outputs[backend] = bb.unet_forward(latents, 500, text)
    finally:
        set_attention_backend(bb.unet, bb.attention_backend, bb.device)
    assert torch.allclose(outputs["xformers"], outputs["math"], atol=1e-5)
    assert stand_in_xformers and not any(stand_in_xformers)  # xformers ran, without masks


@pytest.mark.gpu
@pytest.mark.parametrize("masked", [False, True])
def test_xformers_matches_math_on_cuda(masked):
    """The real xformers, unmasked and with a boolean mask over 5 keys (a bias padded to 8 elements per row)."""
    pytest.importorskip("xformers")
    q, k, v = (t.cuda().half() for t in _qkv())
    keep = None
    if masked:
        keep = torch.rand(2, 1, 1, 5, generator=torch.Generator().manual_seed(2)) > 0.3
        keep[..., 0] = True
        keep = keep.cuda()
    ours = attention(q, k, v, keep, backend="xformers").float()
    assert torch.allclose(ours, attention(q, k, v, keep, backend="math").float(), atol=2e-3)


@pytest.mark.parametrize("options", [
    dict(rescale_output_factor=2.0, residual_connection=True),  # the VAE's mid-block attention's settings
    dict(norm_num_groups=2, rescale_output_factor=2.0, residual_connection=True, image=True),
    dict(cross_attention_dim=6, masked=True),
    dict(qk_norm="layer_norm", cross_attention_dim=6, cross_attention_norm="layer_norm"),
])
def test_the_processor_computes_what_diffusers_own_does(options):
    """Every option of a diffusers `Attention` the processor reads (residual, output rescale, group norm on an
    image-shaped input, a cross-attention mask, query/key norms), against diffusers' default processor."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from vidbooth.attention.processor import VidboothAttnProcessor

    options = dict(options)
    image, masked = options.pop("image", False), options.pop("masked", False)
    torch.manual_seed(0)
    layer = Attention(query_dim=8, heads=2, dim_head=4, **options).eval()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 8, 3, 4, generator=g) if image else torch.randn(2, 5, 8, generator=g)
    context = torch.randn(2, 4, 6, generator=g) if "cross_attention_dim" in options else None
    mask = torch.tensor([[0.0, 0.0, -1e4, 0.0], [0.0, -1e4, 0.0, 0.0]])[:, None] if masked else None
    with torch.no_grad():
        theirs = AttnProcessor2_0()(layer, hidden, context, mask)
        ours = VidboothAttnProcessor("math")(layer, hidden, context, mask)
    assert ours.shape == theirs.shape and torch.allclose(ours, theirs, atol=1e-6)
