"""Bad input to the per-example functions: a clear error naming the problem, or a documented
value."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foresight.gns import noise_scale, per_example_sq_norms
from tests.reference.per_example_loop import per_example_sq_norms_loop


def test_meta_parameters_are_refused_with_what_to_do():
    model = nn.Linear(3, 2, device="meta")
    with pytest.raises(ValueError, match="meta device.*to_empty"):
        noise_scale(model, F.mse_loss, torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="meta device"):
        per_example_sq_norms(nn.Linear(3, 2), F.mse_loss, torch.randn(4, 3, device="meta"),
                             torch.randn(4, 2, device="meta"))


def test_a_zero_size_layer_has_zero_norms_and_the_rest_is_exact():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="zero-element"):
        model = nn.Sequential(nn.Linear(3, 0), nn.Linear(0, 2)).double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    got = per_example_sq_norms(model, F.mse_loss, x, y)
    torch.testing.assert_close(got, per_example_sq_norms_loop(model, F.mse_loss, x, y))


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="at least one example"):
        per_example_sq_norms(nn.Linear(3, 2), F.mse_loss, torch.randn(0, 3), torch.randn(0, 2))


def test_inference_mode_is_named():
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        noise_scale(nn.Linear(3, 2), F.mse_loss, torch.randn(4, 3), torch.randn(4, 2))


@pytest.mark.parametrize(
    ("model", "loss", "inputs", "kw", "error", "match"),
    [
        (lambda x: x, F.mse_loss, torch.randn(4, 3), {}, TypeError, "torch.nn.Module"),
        (nn.Linear(3, 2), "mse", torch.randn(4, 3), {}, TypeError, "loss_fn must be callable"),
        (nn.Linear(3, 2), F.mse_loss, [torch.randn(4, 3)], {}, TypeError, "tuple of tensors"),
        (nn.Linear(3, 2), F.mse_loss, torch.randn(4, 3), {"loss_reduction": "none"}, ValueError,
         "loss_reduction"),
        (nn.Linear(3, 2), lambda o, y: (o - y) ** 2, torch.randn(4, 3), {}, ValueError, "scalar"),
        (nn.Linear(3, 2).requires_grad_(False), F.mse_loss, torch.randn(4, 3), {}, ValueError,
         "no trainable parameters"),
        (nn.Linear(3, 2), F.mse_loss, torch.randn(4, 5), {}, ValueError, "forward pass raised"),
    ],
)
def test_bad_arguments(model, loss, inputs, kw, error, match):
    with pytest.raises(error, match=match):
        per_example_sq_norms(model, loss, inputs, torch.randn(4, 2), **kw)
