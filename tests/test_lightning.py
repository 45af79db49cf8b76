"""ForesightCallback with Lightning's CPU trainer: records, loggers, and unchanged training."""

from __future__ import annotations

import csv
import importlib
import os

import pytest
import torch
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from foresight.integrations.lightning import ForesightCallback  # noqa: E402
from foresight.monitor import Function  # noqa: E402
from foresight.schedule import every  # noqa: E402


def _has_ei() -> bool:
    try:
        return hasattr(importlib.import_module("foresight.ei"), "report")
    except ImportError:
        return False


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loaders():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, generator=g), torch.randint(0, 3, (64,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(data, batch_size=16, shuffle=True,
                                        generator=torch.Generator().manual_seed(1))
    val = torch.utils.data.DataLoader(data, batch_size=32)
    return train, val


def fit(callbacks, tmp_path, logger=False, **kwargs):
    pl.seed_everything(0, verbose=False)
    model = Tiny()
    trainer = pl.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=logger, callbacks=callbacks,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, **kwargs,
    )
    train, val = loaders()
    trainer.fit(model, train, val)
    return model


def weight_norm(model):
    return sum(float(p.detach().norm()) for p in model.parameters())


def test_epoch_records_with_logged_metrics_and_identical_training(tmp_path):
    plain = fit([], tmp_path / "plain")
    callback = ForesightCallback([weight_norm, Function(lambda m: 1.0, name="one")])
    watched = fit([callback], tmp_path / "watched")
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    history = callback.history
    assert [r["epoch"] for r in history] == [0, 1, 2]
    assert [r["step"] for r in history] == [4, 8, 12]  # 4 optimizer steps per epoch
    assert all({"train_loss", "val_loss", "weight_norm", "one"} <= set(r) for r in history)
    assert history[-1]["weight_norm"] == pytest.approx(weight_norm(watched))


def test_step_unit_and_trainer_loggers(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    callback = ForesightCallback([weight_norm], schedule=every(5), unit="step")
    fit([callback], tmp_path, logger=logger, accumulate_grad_batches=2)
    # 4 batches per epoch, 2 per optimizer step: steps 0..5, scheduled at 0 and 5
    assert [r["step"] for r in callback.history] == [0, 5]
    logger.finalize("success")
    path = os.path.join(logger.log_dir, "metrics.csv")
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("foresight/weight_norm")]
    assert [int(r["step"]) for r in rows] == [0, 5]
    # 2 optimizer steps per epoch: step 0 is in epoch 0, step 5 in epoch 2
    assert [int(r["epoch"]) for r in rows] == [0, 2]
    assert [int(r["epoch"]) for r in rows] == [int(r["epoch"]) for r in callback.history]


def test_csv_logger_rows_carry_epoch_and_no_duplicate_trainer_metrics(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(tmp_path, name="run")
    callback = ForesightCallback([weight_norm])
    fit([callback], tmp_path, logger=logger)
    logger.finalize("success")
    with open(os.path.join(logger.log_dir, "metrics.csv"), newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames, list(reader)
    assert "train_loss" in columns and "val_loss" in columns  # Lightning's own
    assert not [c for c in columns if c.startswith("foresight/") and c.endswith("_loss")]
    ours = [r for r in rows if r["foresight/weight_norm"]]
    assert [int(r["epoch"]) for r in ours] == [0, 1, 2]
    assert [float(r["foresight/weight_norm"]) for r in ours] == pytest.approx(
        [r["weight_norm"] for r in callback.history])
    # the history keeps the trainer's metrics next to foresight's (for plots)
    assert all("train_loss" in r for r in callback.history)


def test_tensorboard_logger_tags_carry_the_prefix(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = ForesightCallback([weight_norm, Function(lambda m: 1.0, name="one")],
                                 prefix="fs:")
    fit([callback], tmp_path, logger=logger)
    logger.finalize("success")
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"fs:weight_norm", "fs:one", "train_loss", "val_loss", "epoch"} <= tags
    assert not {t for t in tags if t.startswith("fs:") and t.endswith("loss")}
    steps = [e.step for e in acc.Scalars("fs:weight_norm")]
    assert steps == [r["step"] for r in callback.history]
    epochs = {e.step: e.value for e in acc.Scalars("epoch")}
    assert [epochs[s] for s in steps] == [0, 1, 2]


@pytest.mark.skipif(not _has_ei(), reason="foresight.ei not available")
def test_ei_through_the_callback(tmp_path):
    from foresight import ei as fei

    callback = ForesightCallback(["ei"])
    model = fit([callback], tmp_path)
    assert callback.history[-1]["ei"] == pytest.approx(fei.ei(model, torch.zeros(1, 5)))


def _has_gns() -> bool:
    try:
        return hasattr(importlib.import_module("foresight.gns"), "GradientNoiseScale")
    except ImportError:
        return False


@pytest.mark.skipif(not _has_gns(), reason="foresight.gns tracker not available")
def test_gradient_noise_scale_through_the_callback(tmp_path):
    plain = fit([], tmp_path / "plain", accumulate_grad_batches=2)
    callback = ForesightCallback(["gns"])
    watched = fit([callback], tmp_path / "watched", accumulate_grad_batches=2)
    for a, b in zip(plain.state_dict().values(), watched.state_dict().values()):
        assert torch.equal(a, b)
    # b_simple is nan while |G|^2 is not resolved, never a negative batch size
    assert all("b_simple" in r and not r["b_simple"] <= 0 for r in callback.history)
    assert all(len(m._forward_hooks) + len(m._backward_hooks) == 0 for m in watched.modules())


def test_lightnings_forward_redirection_is_not_a_forward_pass():
    """Under strategy="ddp" the wrapper calls the module with ``forward`` patched to
    ``training_step``, which calls the real ``forward``: only the real one is a forward pass."""
    from lightning.pytorch.strategies.strategy import _ForwardRedirection

    from foresight.gns import GradientNoiseScale, noise_scale
    from foresight.integrations.lightning import _redirected

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 2)).double()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return (self(x) - y).square().mean()

    class Wrapper(nn.Module):  # stands in for DistributedDataParallel
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args):
            return self.module(*args)

    torch.manual_seed(0)
    module = Module()
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    gns = GradientNoiseScale(module, beta=0.0)
    gns.skip_call = _redirected
    loss = _ForwardRedirection()(Wrapper(module), module, "training_step", (x, y), 0)
    loss.backward()
    assert gns._micro_sizes == [8]
    est = gns.step()
    gns.close()
    ref = noise_scale(module, lambda out, t: (out - t).square().mean(), x, y)
    assert est.trace_sigma == pytest.approx(ref.trace_sigma, rel=1e-9)
    assert not _redirected(module)
