"""Registry-driven checks of every backbone and head, plus hand-computed values for the pure helpers."""
from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torchvision
from torch import nn

from models import HEADS, MODELS, Classifier, build_model
from models.heads import NormedLinear, normalize_rows_, tau_normalize_head, tau_normalized_weight
from models.resnet_cifar import SubsampleChannelPad

CIFAR_ARCHS = {"resnet32", "resnet34_cifar"}
OUT_DIMS = {"resnet32": 64, "resnet34_cifar": 512, "resnet50": 2048, "resnext50": 2048}


def _input_for(arch: str) -> torch.Tensor:
    # 32x32 is the CIFAR nets' native size; 64x64 still leaves a 2x2 map after the ImageNet stem.
    # Batches of 2 keep the 21M-25M parameter nets fast; BatchNorm still sees >= 8 values a channel.
    generator = torch.Generator().manual_seed(0)
    if arch == "resnet32":
        return torch.randn(4, 3, 32, 32, generator=generator)
    if arch in CIFAR_ARCHS:
        return torch.randn(2, 3, 32, 32, generator=generator)
    return torch.randn(2, 3, 64, 64, generator=generator)


@pytest.fixture(scope="module")
def backbone_cache() -> dict[str, nn.Module]:
    """Backbones built once per module: initialising a 25M-parameter net costs more than using it."""
    return {}


def _cached_backbone(cache: dict[str, nn.Module], arch: str) -> nn.Module:
    if arch not in cache:
        torch.manual_seed(0)
        cache[arch] = MODELS.build(arch)
    return cache[arch]


def _first_conv(module: nn.Module) -> nn.Conv2d:
    return next(m for m in module.modules() if isinstance(m, nn.Conv2d))


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registries_hold_the_contract_names():
    assert MODELS.names() == sorted(OUT_DIMS)
    assert HEADS.names() == ["linear", "normed"]


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("arch", MODELS.names())
def test_forward_backward(arch: str, head: str, backbone_cache: dict[str, nn.Module]):
    num_classes = 7
    backbone = _cached_backbone(backbone_cache, arch)
    backbone.zero_grad(set_to_none=True)
    model = Classifier(backbone, HEADS.build(head, backbone.out_dim, num_classes, None))
    assert model.feat_dim == model.backbone.out_dim == OUT_DIMS[arch]
    assert model.num_classes == num_classes
    x = _input_for(arch)

    logits, features = model(x, return_features=True)
    assert logits.shape == (x.shape[0], num_classes)
    assert features.shape == (x.shape[0], OUT_DIMS[arch])
    assert torch.isfinite(logits).all() and torch.isfinite(features).all()

    logits.logsumexp(dim=1).mean().backward()
    grad = _first_conv(model.backbone).weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_forward_variants_agree():
    torch.manual_seed(0)
    model = build_model("resnet32", 10).eval()
    x = _input_for("resnet32")
    logits, features = model(x, return_features=True)
    torch.testing.assert_close(model(x), logits)
    torch.testing.assert_close(model.forward_features(x), features)
    torch.testing.assert_close(model.head(features), logits)


@pytest.mark.parametrize("size", [24, 40])
def test_cifar_backbone_pools_globally_at_any_size(size: int):
    backbone = MODELS.build("resnet32").eval()
    assert backbone(torch.randn(2, 3, size, size)).shape == (2, 64)


def test_resnet32_parameter_count():
    # He et al. (2016) ResNet-32 with option-A shortcuts and a 10-way linear classifier.
    assert _num_params(build_model("resnet32", 10)) == 464_154


def test_resnet34_cifar_parameter_count(backbone_cache: dict[str, nn.Module]):
    # About 21.28M with a 10-way linear head (projection shortcuts included, no max-pool).
    backbone = _cached_backbone(backbone_cache, "resnet34_cifar")
    assert 21.0e6 < _num_params(backbone) + 512 * 10 + 10 < 21.5e6


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4, 4)
    out = SubsampleChannelPad(4, 8, stride=2)(x)
    assert out.shape == (2, 8, 2, 2)
    # Two zero channels on each side, the originals (every other pixel) in the middle.
    torch.testing.assert_close(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0


def test_resnet32_pickles():
    # The option-A shortcut is a module, not a lambda, so the whole model pickles.
    model = build_model("resnet32", 10)
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clone.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    "arch, reference",
    [("resnet50", torchvision.models.resnet50), ("resnext50", torchvision.models.resnext50_32x4d)],
)
def test_imagenet_backbones_keep_torchvision_names(arch: str, reference, backbone_cache: dict[str, nn.Module]):
    # Same keys and shapes as torchvision minus fc, which is what a strict checkpoint load needs.
    # The reference is built on the meta device: shapes only, no time spent initialising it.
    backbone = _cached_backbone(backbone_cache, arch)
    with torch.device("meta"):
        ref_state = reference(weights=None).state_dict()
    expected = {k: v.shape for k, v in ref_state.items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in backbone.state_dict().items()} == expected
    assert isinstance(backbone.fc, nn.Identity)


def test_classifier_parameter_names():
    model = build_model("resnet32", 10, head="normed")
    names = [name for name, _ in model.named_parameters()]
    assert all(name.startswith(("backbone.", "head.")) for name in names)
    assert "backbone.conv1.weight" in names and "head.weight" in names


def test_classifier_rejects_mismatched_head():
    with pytest.raises(ValueError, match="64"):
        Classifier(MODELS.build("resnet32"), nn.Linear(512, 10))


@pytest.mark.parametrize("kind, name", [("arch", "resnet33"), ("head", "cosine")])
def test_unknown_name_lists_the_choices(kind: str, name: str):
    kwargs = {"arch": "resnet32", "num_classes": 10, kind: name}
    choices = MODELS.names() if kind == "arch" else HEADS.names()
    with pytest.raises(KeyError) as info:
        build_model(**kwargs)
    assert name in str(info.value)
    assert all(choice in str(info.value) for choice in choices)


def test_linear_head_rejects_scale():
    with pytest.raises(ValueError, match="scale"):
        build_model("resnet32", 10, head="linear", scale=30.0)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.inf])
def test_normed_head_rejects_bad_scale(scale: float):
    with pytest.raises(ValueError, match="scale"):
        NormedLinear(4, 3, scale=scale)


def test_normed_head_default_scale_and_init():
    head = build_model("resnet32", 10, head="normed").head
    assert isinstance(head, NormedLinear) and head.scale == 1.0
    assert head.weight.shape == (10, 64) and dict(head.named_parameters()).keys() == {"weight"}
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))


def test_normed_head_clipped_init_keeps_short_rows_and_clips_long_ones(monkeypatch):
    torch.manual_seed(0)
    head = NormedLinear(64, 10)
    head.reset_parameters(max_norm=5.0)
    norms = head.weight.detach().norm(dim=1)
    assert (head.weight.abs() <= 1).all() and (norms <= 5 + 1e-5).all()
    # 64 uniform(-1, 1) entries have norm about sqrt(64 / 3) = 4.6: some rows stay below 5.
    assert 4.0 < float(norms.mean()) < 5.0 and (norms < 5 - 1e-3).any()
    head = NormedLinear(2048, 3)
    head.reset_parameters(max_norm=5.0)  # norm ~26 before clipping: every row ends at exactly 5
    torch.testing.assert_close(head.weight.norm(dim=1), torch.full((3,), 5.0))
    # Rows drawn as [3, 4] (norm 5) and [0.3, 0.4] (norm 0.5), clipped at 2.5: the first halved, the
    # second kept; without a limit both become unit rows.
    drawn = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    monkeypatch.setattr(torch.Tensor, "uniform_", lambda tensor, low, high: tensor.copy_(drawn))
    head = NormedLinear(2, 2)
    head.reset_parameters(max_norm=2.5)
    torch.testing.assert_close(head.weight.detach(), torch.tensor([[1.5, 2.0], [0.3, 0.4]]))
    head.reset_parameters()
    torch.testing.assert_close(head.weight.detach(), torch.tensor([[0.6, 0.8], [0.6, 0.8]]))


def test_normed_linear_matches_hand_computed_cosine():
    head = NormedLinear(2, 2, scale=2.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    x = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    # cos([3,4],[1,0]) = 3/5; cos([3,4],[1,1]) = 7/(5*sqrt 2); cos([0,-1],[1,0]) = 0; cos([0,-1],[1,1]) = -1/sqrt 2
    expected = 2.0 * torch.tensor([[0.6, 7.0 / (5.0 * math.sqrt(2.0))], [0.0, -1.0 / math.sqrt(2.0)]])
    torch.testing.assert_close(head(x), expected)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1.0 / 0.03])
def test_normed_linear_is_bounded_by_scale(scale: float):
    torch.manual_seed(0)
    head = NormedLinear(16, 5, scale=scale)
    logits = head(100.0 * torch.randn(64, 16))
    assert logits.abs().max() <= scale * (1 + 1e-6)


def test_tau_normalized_weight_hand_computed():
    weight = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    torch.testing.assert_close(tau_normalized_weight(weight, 0.0), weight)
    torch.testing.assert_close(tau_normalized_weight(weight, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    # ||[3,4]|| = 5 -> divide by sqrt 5; ||[0,2]|| = 2 -> divide by sqrt 2.
    expected = torch.tensor([[3.0, 4.0]]) / math.sqrt(5.0)
    torch.testing.assert_close(tau_normalized_weight(weight, 0.5)[:1], expected)
    torch.testing.assert_close(tau_normalized_weight(weight, 0.5)[1], torch.tensor([0.0, math.sqrt(2.0)]))
    # Input untouched, zero rows stay zero rather than nan.
    torch.testing.assert_close(weight, torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.equal(tau_normalized_weight(torch.zeros(1, 3), 1.9), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="tau"):
        tau_normalized_weight(weight, -1.0)


@pytest.mark.parametrize("head_name", HEADS.names())
def test_tau_normalize_head_returns_a_new_head(head_name: str):
    torch.manual_seed(0)
    head = HEADS.build(head_name, 8, 4, None)
    original = copy.deepcopy(head.state_dict())
    normalized = tau_normalize_head(head, 1.9)
    assert normalized is not head
    for key, value in head.state_dict().items():
        assert torch.equal(value, original[key])
    torch.testing.assert_close(normalized.weight, tau_normalized_weight(original["weight"], 1.9))
    if head_name == "linear":
        assert torch.equal(normalized.bias, original["bias"])


def test_tau_normalized_head_with_and_without_the_bias():
    # Rows (3, 4) and (0, 2), bias (1, -1), feature (1, 1), tau 1: normalised rows (0.6, 0.8) and
    # (0, 1) give 1.4 and 1.0; Kang et al. score those (bias dropped), LCSL adds the bias: 2.4, 0.0.
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
        head.bias.copy_(torch.tensor([1.0, -1.0]))
    feature = torch.ones(1, 2)
    assert torch.allclose(tau_normalize_head(head, 1.0, keep_bias=False)(feature), torch.tensor([[1.4, 1.0]]))
    assert torch.allclose(tau_normalize_head(head, 1.0, keep_bias=True)(feature), torch.tensor([[2.4, 0.0]]))
    assert torch.equal(head.bias, torch.tensor([1.0, -1.0]))  # the trained head keeps its bias
    from methods.base import Method
    from methods.lcsl import LCSL

    assert (Method.tau_norm_keeps_bias, LCSL.tau_norm_keeps_bias) == (False, True)


def test_normalize_rows_in_place_keeps_bias():
    torch.manual_seed(0)
    head = nn.Linear(8, 4)
    bias = head.bias.detach().clone()
    weight_before = head.weight.detach().clone()
    assert normalize_rows_(head) is head
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(head.weight, weight_before / weight_before.norm(dim=1, keepdim=True))
    assert torch.equal(head.bias, bias)
    assert head.weight.requires_grad


def test_weight_tools_reject_headless_modules():
    with pytest.raises(TypeError):
        normalize_rows_(nn.ReLU())
    with pytest.raises(TypeError):
        tau_normalize_head(nn.Identity(), 1.0)
