import pytest
import torch
from torch import nn

from foresight._guard import preserved
from tests.reference.model_state import assert_unchanged, snapshot


def _model():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    m[0].weight.grad = torch.ones_like(m[0].weight)
    m[3].weight.requires_grad_(False)
    m[1].eval()
    return m


def test_restores_everything_even_on_error():
    m = _model()
    before = snapshot(m)
    with pytest.raises(RuntimeError), preserved(m):
        m.train()
        m[1].train()
        m(torch.randn(5, 3)).sum().backward()
        m[0].register_forward_hook(lambda *a: None)
        m[3].weight.requires_grad_(True)
        raise RuntimeError("boom")
    assert_unchanged(m, before)


def test_params_guard():
    m = _model()
    before = snapshot(m)
    with preserved(m, params=True), torch.no_grad():
        m[0].weight.add_(1.0)
    assert_unchanged(m, before)
