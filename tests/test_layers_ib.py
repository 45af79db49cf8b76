"""foresight.ib on the layer core: the default representations come from the layer kinds, in the
forward pass's order when the inputs are known."""

from __future__ import annotations

import torch
from torch import nn

from foresight.ib import information_plane
from foresight.ib.layers import ACTIVATIONS, WEIGHT_LAYERS, default_layers
from foresight.layers import kinds


class Shuffled(nn.Module):
    """Modules registered in another order than they run, and one never called."""

    def __init__(self) -> None:
        super().__init__()
        self.act2 = nn.Tanh()
        self.fc2 = nn.Linear(5, 2)
        self.fc1 = nn.Linear(12, 5)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(2, 3)  # defined, not used
        self.head_act = nn.Sigmoid()

    def forward(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))


def test_lists_are_the_layer_kinds():
    assert WEIGHT_LAYERS is kinds.WEIGHT_MODULES
    assert set(kinds.ACTIVATION_MODULES) <= set(ACTIVATIONS)
    assert nn.Softmax in ACTIVATIONS and nn.MultiheadAttention in WEIGHT_LAYERS


def test_default_layers_follow_the_forward_pass():
    torch.manual_seed(0)
    model = Shuffled()
    x = torch.randn(40, 12)
    assert default_layers(model) == ["act1", "head_act"]  # registration order: wrong
    assert default_layers(model, x) == ["act1", "act2"]  # forward order, head left out
    plane = information_plane(model, x, torch.randint(0, 2, (40,)))
    assert [la.name for la in plane.layers] == ["act1", "act2"]
