"""``ForesightCallback``: run a :class:`foresight.Monitor` inside Lightning's ``Trainer``.

.. code-block:: python

    from foresight.integrations.lightning import ForesightCallback

    trainer = lightning.pytorch.Trainer(callbacks=[ForesightCallback(["ei", "gns"])])

The callback creates the Monitor on the LightningModule at ``on_fit_start`` (after the strategy
has wrapped or sharded it), calls ``monitor.step()``
once per optimizer step (in ``on_before_optimizer_step``: after the accumulated backward passes and
before gradient clipping, which is where the gradient noise scale must be read) and
``monitor.epoch_end()`` at the end of each training epoch (after validation), passing the scalar
``trainer.callback_metrics`` (``train_loss``, ``val_loss`` ... whatever the module logs) into the
records. Records go to ``callback.history``, to the given sinks, and -- with ``log=True`` -- to the
trainer's own loggers (TensorBoard, CSV, W&B ...) under ``foresight/<key>`` with Lightning's own
``epoch`` entry, as Lightning logs its metrics (so the ``epoch`` column of ``CSVLogger``'s file is
filled on foresight's rows too). The trainer's metrics are not sent back to its loggers: there is
``train_loss``, never a duplicate ``foresight/train_loss``.

Under ``strategy="ddp"`` (and FSDP2 via ``fully_shard`` in ``configure_model``) the callback runs on
every rank and the Monitor is collective (see :class:`foresight.Monitor`): the metrics measure
the LightningModule, the gradient noise scale reads the DDP wrapper's reduced gradients, every
rank holds the same records, and only rank 0 writes to the sinks (the trainer's loggers write on
rank 0 only anyway).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foresight._optional import require
from foresight.monitor import Monitor
from foresight.monitor.sinks import DEFAULT_PREFIX, History, Sink
from foresight.schedule import Schedule, every

_lightning = require("lightning.pytorch", "foresight.integrations.lightning")

_EVERY = every(1)


class _TrainerLoggers:
    """A sink that forwards foresight's own measurements to the trainer's loggers.

    Keys that came from ``trainer.callback_metrics`` (named in ``skip``) are left out: the trainer
    logs those itself. Each call carries ``epoch`` (unprefixed, Lightning's own key, which its
    loggers treat specially) and goes out at the record's ``step``.
    """

    def __init__(self, trainer: Any, prefix: str, skip: set[str]) -> None:
        self.trainer = trainer
        self.prefix = prefix
        self.skip = skip

    def write(self, record: dict[str, Any]) -> None:
        metrics: dict[str, float] = {
            self.prefix + k: float(v) for k, v in record.items()
            if k not in ("step", "epoch") and k not in self.skip
            and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if not metrics:
            return
        metrics["epoch"] = int(record["epoch"])
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=int(record["step"]))

    def close(self) -> None:
        pass


class ForesightCallback(_lightning.Callback):
    """Measure foresight metrics during ``Trainer.fit`` without changing the training.

    Args:
        metrics: as for :class:`foresight.Monitor` (names, adapters, callables).
        schedule: when to measure (a :mod:`foresight.schedule` object).
        unit: ``"epoch"`` (default: the schedule counts training epochs) or ``"step"`` (optimizer
            steps, ``trainer.global_step``).
        sinks: extra sinks (``CSVSink``, ``TensorBoardSink`` ...).
        log: also send foresight's measurements to the trainer's loggers (without the trainer's
            own metrics, which it logs itself).
        prefix: key prefix in the trainer's loggers (default ``"foresight/"``, the same as
            :data:`foresight.monitor.sinks.DEFAULT_PREFIX`).
    """

    def __init__(
        self,
        metrics: Iterable[Any] = ("ei",),
        *,
        schedule: Schedule = _EVERY,
        unit: str = "epoch",
        sinks: Iterable[Sink] = (),
        log: bool = True,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        super().__init__()
        self.metric_specs = list(metrics) if not isinstance(metrics, str) else [metrics]
        self.schedule = schedule
        self.unit = unit
        self.sinks = list(sinks)
        self.log = log
        self.prefix = prefix
        self.monitor: Monitor | None = None
        self._batch: Any = None
        self._history = History()
        self._trainer_keys: set[str] = set()  # record keys that came from callback_metrics

    @property
    def history(self) -> History:
        """The records measured so far (kept after ``fit`` ends)."""
        return self.monitor.history if self.monitor is not None else self._history

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            return
        sinks = list(self.sinks)
        if self.log and trainer.loggers:
            sinks.append(_TrainerLoggers(trainer, self.prefix, self._trainer_keys))
        self.monitor = Monitor(pl_module, self.metric_specs, schedule=self.schedule,
                               unit=self.unit, sinks=sinks, wrapper=_ddp_wrapper(trainer))
        for m in self.monitor.metrics:
            tracker = getattr(m, "tracker", None)
            if tracker is not None and hasattr(tracker, "skip_call"):
                tracker.skip_call = _redirected

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batch = batch

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self.monitor is not None:
            self.monitor.step(batch=self._batch, step=trainer.global_step,
                              **self._logged(trainer))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.epoch_end(batch=self._batch, epoch=trainer.current_epoch,
                                   **self._logged(trainer))

    def _logged(self, trainer: Any) -> dict[str, Any]:
        values = _scalars(trainer.callback_metrics)
        self._trainer_keys.update(values)
        return values

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit" and self.monitor is not None:
            self._history = self.monitor.history
            self.monitor.close()


_RESERVED = ("step", "epoch", "batch")


def _ddp_wrapper(trainer: Any) -> Any:
    """The strategy's ``DistributedDataParallel`` wrapper around the LightningModule, if any."""
    from torch.nn.parallel import DistributedDataParallel

    model = getattr(trainer.strategy, "model", None)
    return model if isinstance(model, DistributedDataParallel) else None


def _redirected(module: Any) -> bool:
    """Whether this call of the LightningModule is Lightning's forward redirection (under DDP the
    wrapper calls the module with ``forward`` patched to ``training_step``, which then calls the
    real ``forward``): not a forward pass of the model."""
    forward = module.__dict__.get("forward")
    return "_ForwardRedirection" in getattr(forward, "__qualname__", "")


def _scalars(metrics: Any) -> dict[str, Any]:
    """The trainer's logged scalars, renamed where they would clash with the Monitor's own keys."""
    out = {}
    for key, value in dict(metrics).items():
        if hasattr(value, "numel") and value.numel() != 1:
            continue
        name = str(key)
        out[f"logged_{name}" if name in _RESERVED else name] = value
    return out
