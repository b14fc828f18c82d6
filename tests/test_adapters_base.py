import torch
from torch import nn

from vidbooth.adapters.base import BottleneckAdapter, ParallelAdapter, adapters_of, inject, layer_width, remove


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))


def test_fp32_adapter_on_a_half_precision_layer():
    model = _model().to(torch.bfloat16)
    inject(model, ["0"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4))
    adapter = adapters_of(model, "a")["0"]
    assert adapter.up.weight.dtype == torch.float32  # trainable weights stay fp32
    nn.init.normal_(adapter.up.weight)
    out = model(torch.randn(3, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_wrapper_behaves_like_its_layer_and_removal_restores_it():
    model = _model()
    x = torch.randn(2, 8)
    before = model(x)
    inject(model, ["0", "2"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4, cond_dim=3))
    inject(model, ["0"], "b", lambda name, m: BottleneckAdapter(layer_width(m), 2))
    assert isinstance(model[0], ParallelAdapter) and model[0].in_features == 8  # attribute passthrough
    assert torch.equal(model(x), before)  # zero-initialised W_up: an exact no-op
    for adapter in adapters_of(model, "a").values():
        nn.init.normal_(adapter.up.weight)
        adapter.condition = torch.ones(2, 3)
    changed = model(x)
    assert not torch.allclose(changed, before)
    assert remove(model, "a") == 2 and isinstance(model[2], nn.Linear) and isinstance(model[0], ParallelAdapter)
    assert remove(model, "b") == 1 and isinstance(model[0], nn.Linear)
    assert torch.equal(model(x), before)


def test_condition_is_broadcast_per_sample():
    adapter = BottleneckAdapter(4, 4, cond_dim=2)
    nn.init.normal_(adapter.up.weight)
    h = torch.randn(6, 5, 4)  # 2 samples x 3 token groups, 5 frames
    adapter.condition = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    together = adapter(h)
    for sample in range(2):
        adapter.condition = torch.tensor([[1.0, 0.0], [0.0, 1.0]])[sample : sample + 1]
        alone = adapter(h[sample * 3 : (sample + 1) * 3])
        assert torch.allclose(together[sample * 3 : (sample + 1) * 3], alone, atol=1e-6)


def test_conditional_half_only_zeroes_the_unconditional_half_and_resets():
    from vidbooth.adapters.base import adapters_off, conditional_half_only

    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer)
    inject(model, ["0"], "id", lambda name, base: BottleneckAdapter(4, 2))
    adapter = adapters_of(model, "id")["0"]
    nn.init.normal_(adapter.up.weight)
    adapter.conditional_only = True
    h = torch.randn(2 * 2 * 3, 5, 4)  # guidance batch of 2 + 2 samples, 3 frames each, 5 tokens
    with conditional_half_only(model, batch_size=2):
        out = model(h)
    base = layer(h)
    assert torch.equal(out[:6], base[:6])  # the unconditional samples: the base layer alone
    assert not torch.allclose(out[6:], base[6:])
    assert adapter.sample_weights is None and torch.allclose(model(h), base + adapter(h))  # reset after the block
    adapter.conditional_only = False
    with conditional_half_only(model, batch_size=2):
        assert torch.allclose(model(h), base + adapter(h))  # an ordinary adapter acts on both halves
    with adapters_off(model, "id"):
        assert torch.equal(model(h), base)
    assert adapter.enabled


def test_adapters_off_puts_back_each_adapters_own_state():
    """An adapter already off stays off after the block (it had been switched on)."""
    from vidbooth.adapters.base import adapters_off

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    inject(model, ["0", "1"], "id", lambda name, base: BottleneckAdapter(4, 2))
    first, second = adapters_of(model, "id").values()
    second.enabled = False
    with adapters_off(model, "id"):
        assert not first.enabled and not second.enabled
    assert first.enabled and not second.enabled


def test_an_image_prompts_photo_pass_leaves_guidance_weights_as_they_were():
    """Each sampling step's photo pass (a conditional one) lifts the conditional-half weights for its forward: had
    they not come back, a guidance-only adapter would act on the unconditional half too from the second step on."""
    from vidbooth.adapters.base import conditional_half_only
    from vidbooth.adapters.image_prompt import capturing

    model = nn.Sequential(nn.Linear(4, 4))
    inject(model, ["0"], "id", lambda name, base: BottleneckAdapter(4, 2))
    adapter = adapters_of(model, "id")["0"]
    adapter.conditional_only = True
    with conditional_half_only(model, batch_size=1):
        weights = adapter.sample_weights
        with capturing(model):
            assert adapter.sample_weights is None
        assert adapter.sample_weights is weights and weights.tolist() == [0.0, 1.0]


def test_scale_multiplies_the_adapters_output():
    model = _model()
    x = torch.randn(2, 8)
    before = model[0](x)
    inject(model, ["0"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4))
    adapter = adapters_of(model, "a")["0"]
    nn.init.normal_(adapter.up.weight)
    full = model[0](x) - before
    adapter.scale = 0.5
    assert torch.allclose(model[0](x) - before, 0.5 * full, atol=1e-6) and full.abs().max() > 0.01


def test_a_file_with_a_tensor_beyond_the_adapters_is_refused_whole():
    """A file whose tensors name more than this model's adapters (another model's, or a base weight's name) is
    refused, not loaded in part."""
    import pytest

    from vidbooth.adapters.base import adapter_state_dict, load_adapter_state_dict
    from vidbooth.errors import UserError

    model = _model()
    inject(model, ["0"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4))
    state = {key: torch.ones_like(value) for key, value in adapter_state_dict(model, "a").items()}
    with pytest.raises(UserError, match=r"0 missing, 1 unexpected tensors, e.g. 2.weight"):
        load_adapter_state_dict(model, "a", state | {"2.weight": torch.zeros(8, 8)}, "f.safetensors")
    assert all(value.abs().sum() == 0 for key, value in adapter_state_dict(model, "a").items() if "up" in key)
    load_adapter_state_dict(model, "a", state, "f.safetensors")
    assert all(torch.equal(value, torch.ones_like(value)) for value in adapter_state_dict(model, "a").values())


def test_tensors_no_training_writes_are_refused_before_any_is_loaded():
    """int8 or bool tensors had been cast silently, and NaN ones blamed later on the guidance scale."""
    import pytest

    from vidbooth.adapters.base import adapter_state_dict, load_adapter_state_dict
    from vidbooth.errors import UserError

    model = _model()
    inject(model, ["0"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4))
    good = {key: torch.ones_like(value) for key, value in adapter_state_dict(model, "a").items()}
    last = sorted(good)[-1]
    for bad, message in ((good[last].to(torch.int8), "holds int8 values, not floating-point ones"),
                         (good[last].bool(), "holds bool values"),
                         (good[last] * float("nan"), "holds NaN or infinite values"),
                         (good[last] * float("inf"), "holds NaN or infinite values")):
        with pytest.raises(UserError, match=f"f.safetensors: tensor {last} {message}"):
            load_adapter_state_dict(model, "a", good | {last: bad}, "f.safetensors")
        assert all(value.abs().sum() == 0 for key, value in adapter_state_dict(model, "a").items() if "up" in key)


def test_a_file_for_another_width_of_model_says_it_was_trained_on_another_base():
    import pytest

    from vidbooth.adapters.base import adapter_state_dict, load_adapter_state_dict
    from vidbooth.errors import UserError

    model = _model()
    inject(model, ["0"], "a", lambda name, m: BottleneckAdapter(layer_width(m), 4))
    state = {key: torch.ones(*value.shape[:-1], value.shape[-1] + 1) if value.ndim == 2 else value
             for key, value in adapter_state_dict(model, "a").items()}
    with pytest.raises(UserError, match=r"^adapter file f.safetensors does not fit this model \(tensor .* is \(.*\) in "
                                        r"the file, \(.*\) here\): it was trained on another base, or altered "
                                        r"since; use that --base, or retrain it$"):
        load_adapter_state_dict(model, "a", state, "f.safetensors")
