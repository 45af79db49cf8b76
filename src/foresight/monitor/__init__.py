"""Run foresight's metrics during training: :class:`Monitor`, metric adapters and sinks.

>>> import torch
>>> from foresight.monitor import Monitor
>>> model = torch.nn.Linear(8, 3)
>>> def weight_norm(model):
...     return model.weight.norm()
>>> monitor = Monitor(model, [weight_norm])      # every epoch (the default schedule)
>>> for epoch in range(2):
...     # ... train one epoch ...
...     _ = monitor.epoch_end(train_loss=0.5)
>>> sorted(monitor.history[-1])
['epoch', 'step', 'train_loss', 'weight_norm']
"""

from foresight.monitor._monitor import Monitor
from foresight.monitor.metrics import (
    EI,
    CausalEI,
    Context,
    Function,
    GradientNoise,
    InformationPlane,
    Metric,
    as_metric,
)
from foresight.monitor.sinks import CSVSink, History, Sink, TensorBoardSink, WandbSink
from foresight.monitor.tracker import Tracker

__all__ = [
    "Monitor",
    "Metric",
    "Tracker",
    "EI",
    "GradientNoise",
    "InformationPlane",
    "CausalEI",
    "Function",
    "Context",
    "as_metric",
    "Sink",
    "History",
    "CSVSink",
    "TensorBoardSink",
    "WandbSink",
]
