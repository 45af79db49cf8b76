"""The model zoo as training cases: tiny versions of the models researchers train, built from
configs (nothing is downloaded), each with an example batch, targets and a loss (for the
per-example gradient tests; ``tests/zoo.py`` holds the models with an example input, for EI and
the causal measures).

Every entry is ``make(name) -> Case`` with a float64 model in train mode (dropout 0 unless the
name says otherwise, so that per-example losses are defined by the model alone), ``args`` (the
positional inputs), ``targets`` and ``loss(output, targets)`` (a mean over examples).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 37

TRANSFORMERS = ("gpt2", "bert", "llama", "t5")
TORCH = (
    "transformer_encoder", "cnn_bn_layerscale", "weight_norm", "weight_norm_old",
    "orthogonal", "linear_subclass", "tied_embeddings",
)
ALL = TRANSFORMERS + TORCH


@dataclass
class Case:
    name: str
    model: nn.Module
    args: tuple[Any, ...]
    targets: torch.Tensor
    loss: Callable[[Any, Any], torch.Tensor]


def lm_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out - y).square().mean()


class Logits(nn.Module):
    """A transformers model called with ``input_ids`` (and decoder ids), returning its logits."""

    def __init__(self, model: nn.Module, seq2seq: bool = False) -> None:
        super().__init__()
        self.model = model
        self.seq2seq = seq2seq

    def forward(self, ids: torch.Tensor, dec: torch.Tensor | None = None) -> torch.Tensor:
        if self.seq2seq:
            return self.model(input_ids=ids, decoder_input_ids=dec).logits
        return self.model(input_ids=ids).logits


class LayerScale(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class GainLinear(nn.Linear):
    """A Linear subclass with one extra parameter, used inside its own forward."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.gain = nn.Parameter(torch.rand(n_out) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.gain[:, None], self.bias)


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(1, 7, dim) * 0.1)
        self.mid = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        return self.head(torch.tanh(self.mid(h)))


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def make(name: str, *, batch: int = 3, seed: int = 0, dropout: float = 0.0) -> Case:
    """Build the zoo model ``name`` (float64) with an example batch."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, VOCAB, (batch, 6), generator=g)
    lm_targets = torch.randint(0, VOCAB, (batch, 6), generator=g)
    if name in TRANSFORMERS:
        tf = _quiet_transformers()
        if name == "gpt2":
            cfg = tf.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=VOCAB, n_positions=16,
                                resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
            model: nn.Module = Logits(tf.GPT2LMHeadModel(cfg))
        elif name == "bert":
            cfg = tf.BertConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=24,
                                num_attention_heads=2, vocab_size=VOCAB,
                                max_position_embeddings=16, hidden_dropout_prob=dropout,
                                attention_probs_dropout_prob=dropout)
            model = Logits(tf.BertForMaskedLM(cfg))
        elif name == "llama":
            cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=16, intermediate_size=24,
                                 num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                 max_position_embeddings=16, attention_dropout=dropout)
            model = Logits(tf.LlamaForCausalLM(cfg))
        else:
            cfg = tf.T5Config(num_layers=1, num_decoder_layers=1, d_model=16, d_kv=8, d_ff=24,
                              num_heads=2, vocab_size=VOCAB, decoder_start_token_id=0,
                              pad_token_id=0, dropout_rate=dropout)
            model = Logits(tf.T5ForConditionalGeneration(cfg), seq2seq=True)
            dec = torch.randint(0, VOCAB, (batch, 5), generator=g)
            tgt = torch.randint(0, VOCAB, (batch, 5), generator=g)
            return Case(name, model.double().train(), (ids, dec), tgt, lm_loss)
        return Case(name, model.double().train(), (ids,), lm_targets, lm_loss)
    if name == "transformer_encoder":
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=dropout, batch_first=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        model = nn.Sequential(enc, nn.Flatten(), nn.Linear(5 * 8, 3))
        x = torch.randn(batch, 5, 8, generator=g)
        return Case(name, model.double().train(), (x.double(),),
                    torch.randn(batch, 3, generator=g).double(), mse)
    if name == "cnn_bn_layerscale":
        model = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), LayerScale(4), nn.ReLU(),
            nn.Conv2d(4, 3, 3, stride=2, padding=1, padding_mode="reflect"), nn.GroupNorm(1, 3),
            nn.Flatten(), nn.Linear(3 * 4 * 4, 2),
        ).double()
        model.train()
        model[1].eval()  # BatchNorm with running statistics
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.5, 0.5)
            model[1].running_var.uniform_(0.5, 1.5)
        x = torch.randn(batch, 2, 8, 8, generator=g).double()
        return Case(name, model, (x,), torch.randn(batch, 2, generator=g).double(), mse)
    if name in ("weight_norm", "weight_norm_old", "orthogonal"):
        from torch.nn.utils import parametrizations

        if name == "weight_norm":
            first = parametrizations.weight_norm(nn.Linear(4, 5))
        elif name == "weight_norm_old":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                first = torch.nn.utils.weight_norm(nn.Linear(4, 5))
        else:
            first = nn.Linear(4, 5)
        second = parametrizations.orthogonal(nn.Linear(5, 5)) if name == "orthogonal" else (
            nn.Linear(5, 5)
        )
        model = nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(5, 2)).double()
        x = torch.randn(batch, 4, generator=g).double()
        return Case(name, model.train(), (x,), torch.randn(batch, 2, generator=g).double(), mse)
    if name == "linear_subclass":
        model = nn.Sequential(GainLinear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
        x = torch.randn(batch, 4, generator=g).double()
        return Case(name, model.train(), (x,), torch.randn(batch, 2, generator=g).double(), mse)
    if name == "tied_embeddings":
        model = TiedLM().double()
        tid = torch.randint(0, 11, (batch, 7), generator=g)
        return Case(name, model.train(), (tid,), torch.randint(0, 11, (batch, 7), generator=g),
                    lm_loss)
    raise KeyError(f"no zoo model {name!r}; have {ALL}")
