"""Per-example gradient norms on the model zoo (transformers models built from configs, and pure
torch models with parametrizations, tied weights, BatchNorm in eval, LayerScale), against the
brute-force per-example autograd loop (float64, rel 1e-6), and the tracker's coverage."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from foresight.gns import GradientNoiseScale, noise_scale, per_parameter_sq_norms
from foresight.gns.per_example import plan_for
from tests import zoo_cases as zoo
from tests.reference.model_state import assert_unchanged, snapshot
from tests.reference.per_example_graph import per_example_param_sq_norms_graph
from tests.reference.per_example_loop import per_example_param_sq_norms_loop

pytest.importorskip("transformers")

RTOL = 1e-6


def _check(case):
    ref = per_example_param_sq_norms_loop(case.model, case.loss, case.args, case.targets)
    before = snapshot(case.model)
    got, _ = per_parameter_sq_norms(case.model, case.loss, case.args, case.targets)
    assert_unchanged(case.model, before)
    assert set(got) == set(ref)
    for name in ref:
        torch.testing.assert_close(got[name].double(), ref[name], rtol=RTOL, atol=1e-14,
                                   msg=f"{case.name}: {name}")


@pytest.mark.parametrize("name", zoo.ALL)
def test_per_example_norms_equal_the_loop(name):
    _check(zoo.make(name, batch=3, seed=len(name)))


@pytest.mark.parametrize("name", zoo.ALL)
def test_no_whole_model_fallback_and_rules_for_the_named_layers(name):
    case = zoo.make(name)
    plan = plan_for(case.model, case.args)
    assert not plan.unseen and not plan.coupled
    kinds = {u.kind for u in plan.uses}
    fallback = [u for u in plan.uses if u.kind == "fallback"]
    if name in ("gpt2", "bert", "llama", "cnn_bn_layerscale", "weight_norm", "weight_norm_old",
                "orthogonal", "linear_subclass", "tied_embeddings"):
        assert not fallback, [(u.module, u.op) for u in fallback]
    if name == "gpt2":  # Conv1D is an addmm with an (in, out) weight
        assert {u.op for u in plan.uses if u.kind == "linear"} == {"addmm", "linear"}
        assert "embedding" in kinds
    if name in ("llama", "t5"):  # weight * normalised x
        assert "scale" in kinds
    if name == "t5":  # only the relative-position bias (into attention) goes through the fallback
        assert {u.op for u in fallback} == {"scaled_dot_product_attention"}
    if name == "transformer_encoder":
        assert {u.op for u in fallback} == {"multi_head_attention_forward"}


@pytest.mark.parametrize("name", zoo.ALL)
def test_tracker_covers_every_parameter_per_example(name):
    case = zoo.make(name, batch=4)
    with GradientNoiseScale(case.model, beta=0.0) as gns:
        case.loss(case.model(*case.args), case.targets).backward()
        est = gns.step()
        cover = gns.coverage()
    trainable = [n for n, p in case.model.named_parameters() if p.requires_grad]
    assert sorted(cover) == sorted(trainable)
    assert set(cover.values()) == {"per-example"}, {k: v for k, v in cover.items()
                                                   if v != "per-example"}
    case.model.zero_grad()
    ref = noise_scale(case.model, case.loss, case.args, case.targets)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-9)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=1e-9, abs=1e-12)


def _token_losses(out, y):
    per = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
    return per.reshape(y.shape).mean(1)


@pytest.mark.parametrize("name", ["gpt2", "bert"])
def test_dropout_in_train_mode_is_exact(name):
    """With dropout active the per-example gradients are those of the masks the batch drew."""
    case = zoo.make(name, batch=3, dropout=0.2)
    ref = per_example_param_sq_norms_graph(case.model, _token_losses, case.args, case.targets,
                                           seed=5)
    torch.manual_seed(5)
    got, _ = per_parameter_sq_norms(case.model, case.loss, case.args, case.targets)
    for n in ref:  # the batch loss is the mean of the per-example losses
        torch.testing.assert_close(got[n].double(), ref[n], rtol=RTOL, atol=1e-14,
                                   msg=n)
