import pytest
import torch
import torch.nn.functional as F
from torch import nn

from histodrl.nn.fem import FeatureEnhanceModule, GlobalProjection, fem_dilations

# METHOD.md (c), FEM table: M -> (rates, C2 at c_b = 128).
METHOD_TABLE = {
    64: ([1, 2, 6, 12, 24, 48], 768),
    32: ([1, 2, 6, 12, 24], 640),
    16: ([1, 2, 6, 12], 512),
    8: ([1, 2, 6], 384),
    12: ([1, 2, 6, 12], 512),
}


@pytest.mark.parametrize("M", sorted(METHOD_TABLE))
def test_dilations_and_output_channels_match_method_table(M):
    rates, c2 = METHOD_TABLE[M]
    assert fem_dilations(M) == rates
    assert FeatureEnhanceModule(4, M).out_channels == c2


def test_largest_effective_kernel_exceeds_the_map_for_every_M():
    for M in range(2, 300):
        rates = fem_dilations(M)
        assert 2 ** (len(rates) - 1) < M <= 2 ** len(rates)  # k = ceil(log2 M)
        assert 2 * rates[-1] + 1 > M  # eq. 5 with s = 3


def test_clamp_caps_rates_at_M_minus_1_and_keeps_them_distinct():
    assert fem_dilations(12, clamp=True) == [1, 2, 6, 11]
    assert fem_dilations(24, clamp=True) == [1, 2, 6, 12, 23]
    assert fem_dilations(32, clamp=True) == fem_dilations(32)
    for M in range(2, 300):
        rates = fem_dilations(M, clamp=True)
        assert max(rates) <= M - 1
        assert len(set(rates)) == len(rates)


@pytest.mark.parametrize("M", [1, 0, -4, 2.0, True, "8"])
def test_invalid_M_raises_value_error_naming_it(M):
    with pytest.raises(ValueError, match="M="):
        fem_dilations(M)


def test_fem_maps_n_c1_m_m_to_n_k_cb_m_m():
    fem = FeatureEnhanceModule(16, 8, branch_channels=4)
    assert fem(torch.randn(2, 16, 8, 8)).shape == (2, 12, 8, 8)
    assert fem(torch.randn(3, 16, 5, 7)).shape == (3, 12, 5, 7)


def reference_fem(fem: FeatureEnhanceModule) -> list[nn.Sequential]:
    """The literal definition: per-branch Conv(dilation r, padding r) -> BN -> ReLU."""
    cb = fem.branch_channels
    branches = []
    for i, (conv, r) in enumerate(zip(fem.branches, fem.dilations)):
        ref_conv = nn.Conv2d(fem.in_channels, cb, 3, padding=r, dilation=r, bias=False)
        bn = nn.BatchNorm2d(cb)
        with torch.no_grad():
            ref_conv.weight.copy_(conv.weight)
            bn.weight.copy_(fem.bn.weight[i * cb : (i + 1) * cb])
            bn.bias.copy_(fem.bn.bias[i * cb : (i + 1) * cb])
        branches.append(nn.Sequential(ref_conv, bn, nn.ReLU()))
    return branches


@pytest.mark.parametrize(("M", "size"), [(12, (12, 12)), (12, (12, 16)), (8, (8, 8)), (8, (5, 9))])
def test_fem_equals_per_branch_conv_bn_relu_in_train_and_eval_mode(M, size):
    torch.manual_seed(0)
    fem = FeatureEnhanceModule(6, M, branch_channels=3)
    with torch.no_grad():
        fem.bn.weight.uniform_(0.5, 2.0)
        fem.bn.bias.uniform_(-1.0, 1.0)
    reference = reference_fem(fem)
    x = torch.randn(4, 6, *size)
    out = fem(x)
    expected = torch.cat([branch(x) for branch in reference], dim=1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    cb = fem.branch_channels
    for i, branch in enumerate(reference):
        torch.testing.assert_close(
            fem.bn.running_mean[i * cb : (i + 1) * cb], branch[1].running_mean
        )
        torch.testing.assert_close(fem.bn.running_var[i * cb : (i + 1) * cb], branch[1].running_var)
    fem.eval()
    for branch in reference:
        branch.eval()
    torch.testing.assert_close(
        fem(x), torch.cat([b(x) for b in reference], dim=1), rtol=1e-5, atol=1e-5
    )


def test_fem_gradients_equal_the_per_branch_reference():
    torch.manual_seed(1)
    fem = FeatureEnhanceModule(5, 12, branch_channels=2)
    reference = reference_fem(fem)
    x = torch.randn(3, 5, 12, 12, requires_grad=True)
    fem(x).square().sum().backward()
    grad_x = x.grad.clone()
    x.grad = None
    torch.cat([b(x) for b in reference], dim=1).square().sum().backward()
    torch.testing.assert_close(grad_x, x.grad, rtol=1e-4, atol=1e-5)
    for conv, branch in zip(fem.branches, reference):
        torch.testing.assert_close(conv.weight.grad, branch[0].weight.grad, rtol=1e-4, atol=1e-5)


def test_fem_output_is_channels_last_for_a_channels_last_module():
    fem = FeatureEnhanceModule(8, 8, branch_channels=4).eval()
    x = torch.randn(2, 8, 8, 8)
    expected = fem(x)
    fem = fem.to(memory_format=torch.channels_last)
    out = fem(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_fem_same_generator_seed_gives_the_same_weights():
    a = FeatureEnhanceModule(4, 16, 2, generator=torch.Generator().manual_seed(5)).state_dict()
    b = FeatureEnhanceModule(4, 16, 2, generator=torch.Generator().manual_seed(5)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"in_channels": 0}, "in_channels"), ({"branch_channels": 2.5}, "branch_channels")],
)
def test_fem_invalid_sizes_raise_value_error_naming_them(kwargs, name):
    args = {"in_channels": 4, "M": 8, "branch_channels": 2} | kwargs
    with pytest.raises(ValueError, match=name):
        FeatureEnhanceModule(**args)


# -- pre-activation output and the global projection (METHOD.md (b), "Correction (measured)") -------


def test_forward_is_relu_of_the_preactivation_and_both_come_from_one_pass():
    torch.manual_seed(2)
    fem = FeatureEnhanceModule(6, 8, branch_channels=3)
    with torch.no_grad():
        fem.bn.weight.uniform_(0.5, 2.0)
        fem.bn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(4, 6, 8, 8)
    pre = fem.preactivation(x)
    assert pre.shape == (4, 9, 8, 8)
    torch.testing.assert_close(fem(x), torch.relu(pre))
    out, pre2 = fem.forward_with_preactivation(x)
    torch.testing.assert_close(pre2, pre)
    torch.testing.assert_close(out, torch.relu(pre))
    # The ReLU was not applied in place to the returned pre-activation.
    assert (pre2 < 0).any()


def test_preactivation_equals_the_per_branch_conv_bn_reference_and_passes_gradients():
    torch.manual_seed(3)
    fem = FeatureEnhanceModule(5, 12, branch_channels=2)
    reference = reference_fem(fem)
    x = torch.randn(3, 5, 12, 12, requires_grad=True)
    out, pre = fem.forward_with_preactivation(x)
    expected = torch.cat([b[1](b[0](x)) for b in reference], dim=1)
    torch.testing.assert_close(pre, expected, rtol=1e-5, atol=1e-5)
    (out.sum() + pre.square().sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_pooled_preactivation_has_both_signs_and_the_pooled_output_does_not():
    """At initialisation the FEM's BN centres each channel over the batch, so per-image pools of
    the pre-activation lie on both sides of 0, while the post-ReLU pools are all >= 0."""
    torch.manual_seed(4)
    fem = FeatureEnhanceModule(16, 8, branch_channels=4)
    x = torch.relu(torch.randn(8, 16, 8, 8) + torch.randn(8, 16, 1, 1))  # post-ReLU like a tap
    out, pre = fem.forward_with_preactivation(x)
    pooled_pre, pooled = pre.mean(dim=(2, 3)), out.mean(dim=(2, 3))
    assert (pooled >= 0).all()
    # Channel means over the batch are the BN bias (0) in training mode.
    torch.testing.assert_close(pooled_pre.mean(dim=0), torch.zeros(12), atol=1e-5, rtol=0)
    assert 0.3 < (pooled_pre < 0).float().mean() < 0.7


def test_global_projection_centres_nearly_parallel_non_negative_vectors():
    """GAP of post-ReLU maps: non-negative, nearly parallel (cosines ~ 1). The projection's
    output has both signs, batch mean 0 per coordinate at initialisation, and negative cosines."""
    torch.manual_seed(5)
    base = torch.rand(1, 32) + 1.0
    pooled = base + 0.05 * torch.rand(8, 32)
    unit = torch.nn.functional.normalize(pooled, dim=1)
    assert (unit @ unit.T).min() > 0.99
    proj = GlobalProjection(32)
    h = proj(pooled)
    assert h.shape == (8, 32)
    torch.testing.assert_close(h.mean(dim=0), torch.zeros(32), atol=1e-4, rtol=0)
    g = torch.nn.functional.normalize(h, dim=1)
    cos = g @ g.T
    assert (cos[~torch.eye(8, dtype=torch.bool)] < 0).any()
    assert 0.3 < (torch.sigmoid(h) < 0.5).float().mean() < 0.7
    # A linear layer alone keeps the vectors nearly parallel: the BatchNorm is what centres them.
    plain = torch.nn.functional.normalize(proj.linear(pooled), dim=1)
    assert (plain @ plain.T).min() > 0.9


def test_global_projection_shapes_gradients_and_seeding():
    proj = GlobalProjection(6, 4)
    x = torch.rand(5, 6, requires_grad=True)
    proj(x).square().sum().backward()
    assert x.grad is not None and proj.linear.weight.grad.abs().sum() > 0
    assert proj.linear.bias is None
    a = GlobalProjection(4, generator=torch.Generator().manual_seed(7)).state_dict()
    b = GlobalProjection(4, generator=torch.Generator().manual_seed(7)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert GlobalProjection(3).out_features == 3


@pytest.mark.parametrize(
    ("args", "name"), [((0,), "in_features"), ((3, 0), "out_features"), ((2.5,), "in_features")]
)
def test_global_projection_rejects_bad_sizes_naming_them(args, name):
    with pytest.raises(ValueError, match=name):
        GlobalProjection(*args)


def test_global_projection_rejects_a_wrongly_shaped_input():
    with pytest.raises(ValueError, match="expected"):
        GlobalProjection(4)(torch.rand(3, 5))


def test_a_channels_last_preactivation_hands_its_gradient_on_channels_last():
    """DRL's use: ReLU of the originals' half through a batch slice and the pooled pre-activation.
    Their gradients come back in the default layout; the one that reaches the BatchNorm is
    channels_last (a mixed-layout BatchNorm backward is slow on a CPU), and the gradients are the
    ones of the default-layout module."""
    cl = torch.channels_last
    torch.manual_seed(0)
    reference = FeatureEnhanceModule(16, 8, branch_channels=4)
    fem = FeatureEnhanceModule(16, 8, branch_channels=4)
    fem.load_state_dict(reference.state_dict())
    fem = fem.to(memory_format=cl)
    x = torch.randn(4, 16, 8, 8)
    grads = []
    for module, inp in ((reference, x), (fem, x.contiguous(memory_format=cl))):
        inp = inp.clone().requires_grad_()
        pre = module.preactivation(inp)
        seen = []
        pre.register_hook(lambda g, seen=seen: seen.append(g.is_contiguous(memory_format=cl)))
        loss = F.relu(pre[:2]).square().sum() + pre.mean(dim=(2, 3)).square().sum()
        loss.backward()
        grads.append((inp.grad, module.branches[2].weight.grad, module.bn.weight.grad, seen))
    (gx0, gw0, gb0, seen0), (gx1, gw1, gb1, seen1) = grads
    assert seen1 == [True]
    assert gx1.is_contiguous(memory_format=cl)
    for a, b in ((gx0, gx1), (gw0, gw1), (gb0, gb1)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
