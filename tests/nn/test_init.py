import pytest
import torch
from torch import nn

from histodrl.nn.init import pytorch_default_init_, torchvision_init_


@pytest.mark.parametrize(
    "make",
    [lambda: nn.Conv2d(6, 5, 3), lambda: nn.Conv2d(4, 3, 1, bias=False), lambda: nn.Linear(7, 2)],
)
def test_default_init_draws_exactly_what_reset_parameters_draws_for_the_same_seed(make):
    layer = make()
    torch.manual_seed(11)
    layer.reset_parameters()
    expected = {k: v.clone() for k, v in layer.state_dict().items()}
    pytorch_default_init_(layer, torch.Generator().manual_seed(11))
    for key, value in layer.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_generator_leaves_the_global_rng_untouched():
    torch.manual_seed(0)
    state = torch.get_rng_state()
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    torch.set_rng_state(state)
    torchvision_init_(module, torch.Generator().manual_seed(1))
    pytorch_default_init_(module, torch.Generator().manual_seed(1))
    assert torch.equal(torch.get_rng_state(), state)


def test_torchvision_init_resets_batch_norm_and_zeroes_biases():
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(3.0)
        module[1].running_mean.fill_(2.0)
    torchvision_init_(module, torch.Generator().manual_seed(0))
    assert torch.count_nonzero(module[0].bias) == 0 and torch.count_nonzero(module[2].bias) == 0
    assert torch.all(module[1].weight == 1) and torch.count_nonzero(module[1].bias) == 0
    assert torch.count_nonzero(module[1].running_mean) == 0
    assert not torch.all(module[0].weight == 3.0) and not torch.all(module[2].weight == 3.0)
