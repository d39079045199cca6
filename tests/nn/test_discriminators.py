import numpy as np
import pytest
import torch

from histodrl.nn.discriminators import LocalDiscriminator, PriorDiscriminator


def numpy_local_discriminator(d: LocalDiscriminator, x: np.ndarray) -> np.ndarray:
    """1x1-conv D as explicit per-location matrix products: h <- relu(W h + b), last layer linear."""
    convs = [m for m in d.layers if isinstance(m, torch.nn.Conv2d)]
    h = x.astype(np.float64)  # (N, C, H, W)
    for i, conv in enumerate(convs):
        w = conv.weight.detach().double().numpy()[:, :, 0, 0]  # (Cout, Cin)
        b = conv.bias.detach().double().numpy()
        h = np.einsum("oc,nchw->nohw", w, h) + b[None, :, None, None]
        if i < len(convs) - 1:
            h = np.maximum(h, 0.0)
    return h


def test_local_discriminator_matches_numpy_per_location_mlp():
    torch.manual_seed(0)
    d = LocalDiscriminator(10, widths=(8, 6, 5))
    x = torch.randn(2, 10, 4, 3)
    out = d(x)
    assert out.shape == (2, 1, 4, 3)
    np.testing.assert_allclose(
        out.detach().numpy(), numpy_local_discriminator(d, x.numpy()), rtol=1e-5, atol=1e-6
    )


def test_default_layers_are_1x1_convs_512_256_256_then_1_without_batch_norm():
    d = LocalDiscriminator(1152)
    convs = [m for m in d.layers if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (1152, 512),
        (512, 256),
        (256, 256),
        (256, 1),
    ]
    assert all(c.kernel_size == (1, 1) and c.bias is not None for c in convs)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.Sigmoid)) for m in d.modules())


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_split_input_equals_the_concatenated_input_with_equal_gradients(kernel_size):
    torch.manual_seed(1)
    d = LocalDiscriminator(12, widths=(8, 4), kernel_size=kernel_size)
    e = torch.randn(3, 5, 6, 6, requires_grad=True)
    f = torch.randn(3, 7, 6, 6, requires_grad=True)
    split = d(e, f)
    split.square().sum().backward()
    grads = [e.grad.clone(), f.grad.clone(), *(p.grad.clone() for p in d.parameters())]
    e.grad = f.grad = None
    d.zero_grad()
    # The reference: nn.Conv2d layers on the materialised concatenation.
    joined = d.layers(torch.cat([e, f], dim=1))
    joined.square().sum().backward()
    torch.testing.assert_close(split, joined, rtol=1e-5, atol=1e-5)
    expected = [e.grad, f.grad, *(p.grad for p in d.parameters())]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("global_first", [False, True])
def test_broadcast_global_vector_equals_explicit_tiling(kernel_size, global_first):
    torch.manual_seed(2)
    d = LocalDiscriminator(9, widths=(6, 4), kernel_size=kernel_size)
    local = torch.randn(2, 5, 7, 7, requires_grad=True)
    g = torch.randn(2, 4, 1, 1, requires_grad=True)
    tiled = g.expand(2, 4, 7, 7).contiguous()
    parts = (g, local) if global_first else (local, g)
    out = d(*parts)
    out.sum().backward()
    grad_g = g.grad.clone()
    g.grad = None
    reference = d.layers(torch.cat((tiled, local) if global_first else (local, tiled), dim=1))
    reference.sum().backward()
    assert out.shape == (2, 1, 7, 7)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_g, g.grad, rtol=1e-4, atol=1e-5)


def test_discriminator_outputs_raw_logits_not_probabilities():
    torch.manual_seed(3)
    d = LocalDiscriminator(4, widths=(16,))
    with torch.no_grad():
        d.layers[-1].bias.fill_(5.0)
    assert (d(torch.randn(2, 4, 3, 3)) > 1).any()


def test_discriminator_channels_last_input_gives_the_same_logits():
    torch.manual_seed(4)
    d = LocalDiscriminator(12, widths=(8, 4))
    e, f = torch.randn(2, 5, 6, 6), torch.randn(2, 7, 6, 6)
    expected = d(e, f)
    d = d.to(memory_format=torch.channels_last)
    cl = torch.channels_last
    torch.testing.assert_close(
        d(e.to(memory_format=cl), f.to(memory_format=cl)), expected, rtol=1e-5, atol=1e-5
    )


def test_wrong_part_channels_or_shapes_raise_value_error():
    d = LocalDiscriminator(12, widths=(4,))
    with pytest.raises(ValueError, match="12"):
        d(torch.randn(1, 5, 4, 4), torch.randn(1, 6, 4, 4))
    with pytest.raises(ValueError, match="broadcastable"):
        d(torch.randn(1, 5, 4, 4), torch.randn(1, 7, 3, 4))
    with pytest.raises(ValueError, match="at least one"):
        d()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"in_channels": 0}, "in_channels"),
        ({"widths": ()}, "widths"),
        ({"widths": (4, -1)}, "widths"),
        ({"kernel_size": 2}, "kernel_size"),
        ({"kernel_size": 0}, "kernel_size"),
    ],
)
def test_invalid_discriminator_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LocalDiscriminator(**({"in_channels": 4} | kwargs))


def test_prior_discriminator_is_a_1000_200_1_mlp_matching_numpy():
    torch.manual_seed(5)
    d = PriorDiscriminator(7)
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(7, 1000), (1000, 200), (200, 1)]
    z = torch.rand(4, 7)
    out = d(z)
    assert out.shape == (4,)
    h = z.double().numpy()
    for i, m in enumerate(linears):
        h = h @ m.weight.detach().double().numpy().T + m.bias.detach().double().numpy()
        if i < 2:
            h = np.maximum(h, 0.0)
    np.testing.assert_allclose(out.detach().numpy(), h[:, 0], rtol=1e-5, atol=1e-6)


def test_prior_discriminator_rejects_a_wrongly_shaped_input():
    d = PriorDiscriminator(6, hidden=(5,))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        d(torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"\(N, 6\)"):
        d(torch.rand(3, 6, 1))


def test_same_generator_seed_gives_the_same_discriminators():
    def make(seed):
        g = torch.Generator().manual_seed(seed)
        return LocalDiscriminator(6, (4,), generator=g).state_dict() | {
            "prior." + k: v
            for k, v in PriorDiscriminator(3, (4,), generator=g).state_dict().items()
        }

    a, b, c = make(7), make(7), make(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["layers.0.weight"], c["layers.0.weight"])


@pytest.mark.parametrize("kernel_size", [1, 3])
@pytest.mark.parametrize("shared_size", [(5, 6), (1, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_forward_shared_equals_the_shared_part_repeated_per_group(
    kernel_size, shared_size, channels_last
):
    torch.manual_seed(0)
    d = LocalDiscriminator(7, widths=(6, 5), kernel_size=kernel_size)
    local = torch.randn(3 * 4, 4, 5, 6, requires_grad=True)
    shared = torch.randn(4, 3, *shared_size, requires_grad=True)
    if channels_last:
        local = local.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    # Reference: every group gets an explicit copy of the shared part, tiled to the map.
    tiled = shared.expand(4, 3, 5, 6).repeat(3, 1, 1, 1)
    expected = d.layers(torch.cat([local, tiled], dim=1))
    got = d.forward_shared(local, shared)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(got.square().sum(), (local, shared))
    ref = torch.autograd.grad(expected.square().sum(), (local, shared))
    for a, b in zip(grads, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_forward_shared_rejects_a_batch_that_is_not_whole_groups():
    d = LocalDiscriminator(4, widths=(3,))
    with pytest.raises(ValueError, match="groups"):
        d.forward_shared(torch.randn(5, 2, 3, 3), torch.randn(2, 2, 3, 3))
