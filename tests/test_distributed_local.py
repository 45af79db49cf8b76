"""foresight.distributed without a process group, and what the distributed work changed in one
process: nested calls counted once, a skipped (redirected) call, sinks created lazily."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from torch import nn

from foresight import distributed
from foresight.gns import GradientNoiseScale, two_batch
from foresight.monitor import Function, Monitor
from foresight.monitor.sinks import CSVSink, TensorBoardSink, WandbSink


def mse(out, y):
    return (out - y).square().mean()


def test_no_process_group_means_one_rank_and_no_communication():
    assert not distributed.initialized() or distributed.world_size() >= 1
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.all_reduce_sum([1.0, 2.0, 3.5]) == [1.0, 2.0, 3.5]
    assert distributed.all_reduce_sum([]) == []
    assert distributed.agree(lambda: {"a": 1.0}, same=3) == {"a": 1.0}
    with pytest.raises(KeyError):
        distributed.agree(lambda: {}["missing"])
    model = nn.Linear(3, 2)
    assert distributed.shared(model, 123) == 123
    t = torch.randn(3)
    assert distributed.local(t) is t


def test_detect_plain_models_and_wrapper_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    par = distributed.detect(model)
    assert (par.kind, par.world, par.collective, par.sharded) == ("none", 1, False, False)
    assert par.module is model and par.wrapper is None
    assert list(par.params()) == [n for n, _ in model.named_parameters()]
    assert all(par.forward_tensors()[n] is p for n, p in model.named_parameters())
    assert par.syncing() and not par.missing_forward_tensors()
    par.check_gradients()  # nothing to object to
    assert par.local_grad("0.weight", model[0].weight) == []
    with pytest.raises(distributed.DistributedError, match="DistributedDataParallel wrapper"):
        distributed.detect(model[0], wrapper=model)
    assert not distributed.is_sharded(model)


def test_full_weights_is_a_no_op_for_plain_models():
    model = nn.Linear(3, 2)
    before = [p for p in model.parameters()]
    hooks = dict(model._forward_pre_hooks)
    with distributed.full_weights(model) as m:
        assert m is model
        assert model(torch.randn(4, 3)).shape == (4, 2)
    assert [p for p in model.parameters()] == before and dict(model._forward_pre_hooks) == hooks


class Nested(nn.Module):
    """A model whose forward calls the model itself again (a nested call of the root)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2).double()

    def forward(self, x, inner=False):
        return self.lin(x) if inner else self(x, inner=True)


@pytest.mark.parametrize("per_example", [False, True])
def test_a_nested_call_of_the_model_is_part_of_the_outer_forward_pass(per_example):
    torch.manual_seed(0)
    model = Nested()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    gns = GradientNoiseScale(model, beta=0.0, per_example=per_example)
    for part in (slice(0, 4), slice(4, 8)):
        (mse(model(x[part]), y[part]) / 2).backward()
    assert gns._micro_sizes == [4, 4]  # two forward passes, not four
    est = gns.step()
    gns.close()
    params = list(model.parameters())

    def sq(xb, yb):
        return float(sum(g.square().sum() for g in torch.autograd.grad(mse(model(xb), yb),
                                                                        params)))

    if per_example:
        from foresight.gns import noise_scale

        ref = noise_scale(model, mse, x, y)
    else:
        ref = two_batch((sq(x[:4], y[:4]) + sq(x[4:], y[4:])) / 2, sq(x, y), 4, 8)
    assert est.batch_size == 8
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-9)
    assert est.grad_sq_norm == pytest.approx(ref.grad_sq_norm, rel=1e-9)


def test_skip_call_leaves_out_a_redirected_call_but_counts_the_calls_inside():
    torch.manual_seed(0)
    model = Nested()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    gns = GradientNoiseScale(model, beta=0.0)
    gns.skip_call = lambda m: True  # every outermost call is a redirection: nothing counts
    mse(model(x), y).backward()
    assert gns._micro_sizes == []
    gns.close()


def test_csv_sink_creates_its_file_at_the_first_write_or_at_close(tmp_path):
    path = tmp_path / "sub" / "m.csv"
    sink = CSVSink(path)
    assert not path.exists()  # an unused sink (another rank's) leaves nothing behind
    sink.write({"step": 0, "ei": 1.0})
    assert path.read_text().splitlines() == ["step,ei", "0,1.0"]
    empty = CSVSink(tmp_path / "empty.csv", layout="long")
    empty.close()
    assert (tmp_path / "empty.csv").read_text().strip() == "step,epoch,metric,layer,value"
    path.write_text("old")
    again = CSVSink(path)
    mon = Monitor(nn.Linear(2, 2), [Function(lambda m: 2.0, name="two")], unit="step",
                  sinks=[again])
    mon.step()
    mon.close()
    assert path.read_text().splitlines() == ["step,epoch,two", "0,0,2.0"]


def test_tensorboard_sink_creates_its_writer_at_the_first_write(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path / "tb")
    assert not (tmp_path / "tb").exists()
    sink.close()  # never written: no event file
    assert not (tmp_path / "tb").exists()
    sink = TensorBoardSink(tmp_path / "tb")
    sink.write({"step": 1, "ei": 0.5})
    sink.close()
    assert any(f.startswith("events.") for f in os.listdir(tmp_path / "tb"))


def test_wandb_sink_starts_a_run_at_the_first_write(monkeypatch):
    inits, logged = [], []

    class Run:
        def log(self, data, step=None):
            logged.append(data)

    fake = types.ModuleType("wandb")
    fake.run = None

    def init(**kw):
        inits.append(kw)
        return Run()

    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandbSink(project="p")
    assert inits == []  # constructing it on every rank starts no run
    sink.write({"step": 0, "ei": 1.0})
    assert inits == [{"project": "p"}] and logged == [{"foresight/step": 0, "foresight/ei": 1.0}]
