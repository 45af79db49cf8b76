"""The acceptance zoo of issue 9: models researchers train, tiny, built from configs (nothing is
downloaded), each with an example input.

``make(name)`` returns ``(model, inputs)``: a freshly initialised model (seeded, in eval mode,
float64 unless ``dtype`` says otherwise) and what it is called with (a tensor, or a dict of
keyword arguments). The transformers models need ``transformers`` (a pinned test dependency);
``TRANSFORMERS`` lists them, ``TORCH`` the pure-torch ones.

>>> model, inputs = make("tied_embeddings")
>>> tuple(model(inputs).shape)
(3, 6, 11)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["make", "NAMES", "TRANSFORMERS", "TORCH", "first_tensor", "LayerScale", "GainLinear",
           "TiedLM"]

BATCH, SEQ, VOCAB = 3, 6, 11


def _ids(batch: int = BATCH, seq: int = SEQ, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


def gpt2() -> tuple[nn.Module, Any]:
    """GPT-2: Conv1D (``addmm`` with an ``(in, out)`` weight), position embeddings indexed with a
    batch of one, ``wte`` tied to ``lm_head``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _quiet_transformers()
    cfg = GPT2Config(n_layer=2, n_embd=8, n_head=2, vocab_size=VOCAB, n_positions=16,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg), _ids()


def bert() -> tuple[nn.Module, Any]:
    """BERT: nn.Linear and nn.LayerNorm, token-type embeddings of a broadcast buffer, a pooler."""
    from transformers import BertConfig, BertModel

    _quiet_transformers()
    cfg = BertConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=2,
                     intermediate_size=16, vocab_size=VOCAB, max_position_embeddings=16)
    return BertModel(cfg), _ids()


def llama() -> tuple[nn.Module, Any]:
    """Llama: RMSNorm written as ``weight * normalised x``, grouped-query attention, SiLU MLP."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _quiet_transformers()
    cfg = LlamaConfig(num_hidden_layers=2, hidden_size=8, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=16, vocab_size=VOCAB,
                      max_position_embeddings=16, bos_token_id=0, eos_token_id=0,
                      pad_token_id=0)
    return LlamaForCausalLM(cfg), _ids()


def t5() -> tuple[nn.Module, Any]:
    """T5: encoder-decoder, T5LayerNorm (``weight * x * rsqrt``), a relative position bias added
    inside the attention, ``shared`` embedding tied to both embeddings and the output layer."""
    from transformers import T5Config, T5ForConditionalGeneration

    _quiet_transformers()
    cfg = T5Config(num_layers=1, num_decoder_layers=1, d_model=8, d_kv=4, num_heads=2, d_ff=16,
                   vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    ids = _ids()
    return T5ForConditionalGeneration(cfg), {"input_ids": ids, "decoder_input_ids": _ids()}


def transformer_encoder() -> tuple[nn.Module, Any]:
    """``nn.TransformerEncoder(batch_first=True)``: nn.MultiheadAttention inside."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # enable_nested_tensor is not used with norm_first
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True,
                                           norm_first=True)
        model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    with torch.no_grad():  # the encoder copies its layer: make the copies differ
        for p in model.layers[1].parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model, torch.randn(BATCH, SEQ, 8)


class LayerScale(nn.Module):
    """``x * gamma`` per channel (CaiT, ConvNeXt)."""

    def __init__(self, channels: int, init: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn = nn.BatchNorm2d(c)
        self.ls = LayerScale(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls(F.gelu(self.bn(self.conv(x))))


def cnn() -> tuple[nn.Module, Any]:
    """A CNN with BatchNorm (eval mode, random running statistics) and LayerScale."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(), _Block(4),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 5),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
    return model, torch.randn(BATCH, 2, 8, 8)


def weight_norm() -> tuple[nn.Module, Any]:
    """``torch.nn.utils.parametrizations.weight_norm`` on a Linear layer."""
    from torch.nn.utils.parametrizations import weight_norm as wn

    model = nn.Sequential(wn(nn.Linear(5, 4)), nn.Tanh(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].parametrizations.weight.original0.mul_(1.7)  # g differs from ||v||
    return model, torch.randn(BATCH, 5)


def weight_norm_old() -> tuple[nn.Module, Any]:
    """The old ``torch.nn.utils.weight_norm`` (a forward pre-hook computing ``weight``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        layer = torch.nn.utils.weight_norm(nn.Linear(5, 4))
    with torch.no_grad():
        layer.weight_g.mul_(1.7)
    return nn.Sequential(layer, nn.Sigmoid(), nn.Linear(4, 3)), torch.randn(BATCH, 5)


def orthogonal() -> tuple[nn.Module, Any]:
    """``torch.nn.utils.parametrizations.orthogonal`` on a Linear layer."""
    from torch.nn.utils.parametrizations import orthogonal as orth

    model = nn.Sequential(orth(nn.Linear(6, 6)), nn.ReLU(), nn.Linear(6, 2))
    return model, torch.randn(BATCH, 6)


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2.0 * w


def parametrized() -> tuple[nn.Module, Any]:
    """``torch.nn.utils.parametrize.register_parametrization`` with a custom parametrization."""
    lin = nn.Linear(4, 3)
    parametrize.register_parametrization(lin, "weight", _Double())
    return nn.Sequential(lin, nn.Tanh(), nn.Linear(3, 2)), torch.randn(BATCH, 4)


class GainLinear(nn.Linear):
    """A Linear subclass with one extra parameter and a forward of its own."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.gain = nn.Parameter(torch.rand(n_out) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.gain[:, None], self.bias)


def linear_subclass() -> tuple[nn.Module, Any]:
    return nn.Sequential(GainLinear(5, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(BATCH, 5)


class TiedLM(nn.Module):
    """A tiny language model whose output layer is the embedding table (tied weights)."""

    def __init__(self, vocab: int = VOCAB, dim: int = 5) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(ids))))


def tied_embeddings() -> tuple[nn.Module, Any]:
    return TiedLM(), _ids()


TRANSFORMERS: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "gpt2": gpt2, "bert": bert, "llama": llama, "t5": t5,
}
TORCH: dict[str, Callable[[], tuple[nn.Module, Any]]] = {
    "transformer_encoder": transformer_encoder, "cnn": cnn, "weight_norm": weight_norm,
    "weight_norm_old": weight_norm_old, "orthogonal": orthogonal, "parametrized": parametrized,
    "linear_subclass": linear_subclass, "tied_embeddings": tied_embeddings,
}
NAMES = list(TRANSFORMERS) + list(TORCH)


def make(name: str, *, dtype: torch.dtype = torch.float64, seed: int = 0,
         train: bool = False) -> tuple[nn.Module, Any]:
    """``(model, inputs)`` of the zoo model ``name`` (see the module documentation)."""
    builder = TRANSFORMERS.get(name) or TORCH[name]
    torch.manual_seed(seed)
    model, inputs = builder()
    model = model.to(dtype).train(train)
    if isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
        inputs = inputs.to(dtype)
    return model, inputs


def first_tensor(output: Any) -> torch.Tensor:
    """The first tensor of a model output (a tensor, a tuple, or a transformers ``ModelOutput``)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    if isinstance(output, dict):
        output = list(output.values())
    for o in output:
        if isinstance(o, torch.Tensor):
            return o
    raise TypeError(f"no tensor in {type(output).__name__}")
