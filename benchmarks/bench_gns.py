"""Per-example squared gradient norms: time and peak memory relative to a plain training step.

For each model the script times, interleaved over repetitions (medians), a plain
forward+backward of the batch (the baseline), ``foresight.gns.per_example_sq_norms`` and the
peers that are installed -- torch.func (``vmap`` of ``grad``, then norms), BackPACK
(``BatchL2Grad``) and Opacus (``GradSampleModule``, then norms of ``grad_sample``) -- and prints
every time as a ratio to the baseline measured in the same run. Peak memory is the largest amount
of CPU tensor memory allocated during one call above what was held before it (from the torch
profiler's memory events, op granularity), again as a ratio to the baseline. A peer that fails on
a model is reported as skipped with the reason.

A second table times a whole training step (forward, backward, ``GradientNoiseScale.step()``,
optimizer step) with the tracker measuring every step, and 100 steps with ``every=10``, each as a
ratio to the same loop without the tracker, interleaved over repetitions.

Run: ``python benchmarks/bench_gns.py [--reps N] [--threads T]
[--models mlp,cnn,transformer,gpt2] [--tracker mlp,cnn,transformer]``. ``gpt2`` is Hugging Face's
``GPT2LMHeadModel`` built from a config (4 layers, width 256, 128 tokens, batch 16, the GPT-2
vocabulary); it needs ``transformers``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from foresight.gns import per_example_sq_norms

# ----------------------------------------------------------------------------- models


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Callable]:
    model = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    return model, torch.randn(128, 784), torch.randint(0, 10, (128,)), F.cross_entropy


def cnn() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Callable]:
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,)), F.cross_entropy


class Block(nn.Module):
    """Pre-LayerNorm transformer block; attention from Linear projections and SDPA."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 256, d: int = 128, seq: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.Sequential(*(Block(d, 4) for _ in range(layers)))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        pos = torch.arange(t, device=ids.device).expand(b, t)
        return self.head(self.ln(self.blocks(self.tok(ids) + self.pos(pos))))


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))


def transformer() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Callable]:
    ids = torch.randint(0, 256, (32, 64))
    return TinyGPT(), ids, torch.randint(0, 256, (32, 64)), lm_loss


class _Logits(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits


def gpt2() -> tuple[nn.Module, torch.Tensor, torch.Tensor, Callable]:
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.GPT2Config(n_layer=4, n_embd=256, n_head=4, n_positions=128)
    model = _Logits(transformers.GPT2LMHeadModel(cfg))
    ids = torch.randint(0, cfg.vocab_size, (16, 128))
    return model, ids, torch.randint(0, cfg.vocab_size, (16, 128)), lm_loss


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer, "gpt2": gpt2}

# ----------------------------------------------------------------------------- methods


def plain(model, x, y, loss_fn):
    model.zero_grad(set_to_none=True)
    loss_fn(model(x), y).backward()
    return lambda: (model.zero_grad(set_to_none=True), loss_fn(model(x), y).backward())


def ours(model, x, y, loss_fn):
    return lambda: per_example_sq_norms(model, loss_fn, x, y)


def torch_func(model, x, y, loss_fn):
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}

    def one(p, xi, yi):
        return loss_fn(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

    def run():
        g = vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)
        return sum(v.reshape(v.shape[0], -1).square().sum(1) for v in g.values())

    return run


def backpack(model, x, y, loss_fn):
    from backpack import backpack as bp_ctx
    from backpack import extend
    from backpack.extensions import BatchL2Grad

    if loss_fn is not F.cross_entropy:
        raise RuntimeError("BackPACK needs an nn.Module loss; sequence losses are not supported")
    m = extend(copy.deepcopy(model))
    lf = extend(nn.CrossEntropyLoss())

    def run():
        m.zero_grad(set_to_none=True)
        with bp_ctx(BatchL2Grad()):
            lf(m(x), y).backward()
        return sum(p.batch_l2 for p in m.parameters())

    return run


def opacus(model, x, y, loss_fn):
    from opacus import GradSampleModule

    m = GradSampleModule(copy.deepcopy(model))

    def run():
        m.zero_grad(set_to_none=True)
        for p in m.parameters():
            p.grad_sample = None
        loss_fn(m(x), y).backward()
        return sum(p.grad_sample.reshape(x.shape[0], -1).square().sum(1) for p in m.parameters())

    return run


METHODS = {
    "plain step": plain,
    "foresight": ours,
    "torch.func": torch_func,
    "BackPACK": backpack,
    "Opacus": opacus,
}

# ----------------------------------------------------------------------------- measuring


def peak_memory(fn: Callable) -> int:
    """Peak CPU tensor memory allocated during ``fn()`` above the level before it (bytes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def bench(name: str, reps: int) -> None:
    torch.manual_seed(0)
    model, x, y, loss_fn = MODELS[name]()
    runs: dict[str, Callable] = {}
    skipped: dict[str, str] = {}
    for mname, make in METHODS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn = make(model, x, y, loss_fn)
                fn()  # warm-up (and a check that it works)
            runs[mname] = fn
        except Exception as exc:  # a peer that cannot handle this model
            skipped[mname] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    times: dict[str, list[float]] = {m: [] for m in runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(reps):
            for mname, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[mname].append(time.perf_counter() - t0)
        mems = {m: peak_memory(fn) for m, fn in runs.items()}
    base_t = statistics.median(times["plain step"])
    base_m = mems["plain step"]
    print(f"\n{name}: batch {x.shape[0]}, plain step {1e3 * base_t:.1f} ms (median of {reps})")
    print(f"  {'method':<12} {'time / plain':>13} {'peak mem / plain':>17}")
    for mname in runs:
        t = statistics.median(times[mname]) / base_t
        m = mems[mname] / base_m if base_m else float("nan")
        print(f"  {mname:<12} {t:>12.2f}x {m:>16.2f}x")
    for mname, why in skipped.items():
        print(f"  {mname:<12} skipped ({why})")


def _loop(model, x, y, loss_fn, steps: int, tracker=None) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def run() -> None:
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            if tracker is not None:
                tracker.step()
            opt.step()

    return run


def bench_tracker(name: str, reps: int) -> None:
    """A training step with the tracker (every step measured) and 100 steps with every=10, each
    against the same loop without it (every loop trains its own copy of the model)."""
    from foresight.gns import GradientNoiseScale

    torch.manual_seed(0)
    model, x, y, loss_fn = MODELS[name]()
    copies = [copy.deepcopy(model) for _ in range(4)]
    each = GradientNoiseScale(copies[1])
    every = GradientNoiseScale(copies[3], every=10)
    runs = {
        "plain step": _loop(copies[0], x, y, loss_fn, 1),
        "tracker step": _loop(copies[1], x, y, loss_fn, 1, each),
        "plain x100": _loop(copies[2], x, y, loss_fn, 100),
        "every=10 x100": _loop(copies[3], x, y, loss_fn, 100, every),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for rep in range(reps + 1):  # the first round warms up (and plans the model)
            for key, fn in runs.items():
                if key.endswith("x100") and rep > max(2, reps // 5):
                    continue
                t0 = time.perf_counter()
                fn()
                if rep:
                    times[key].append(time.perf_counter() - t0)
    each.close()
    every.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name} (tracker): plain step {1e3 * med['plain step']:.1f} ms "
          f"(median of {len(times['plain step'])}; 100-step loops: {len(times['plain x100'])})")
    print(f"  tracker, every step measured   {med['tracker step'] / med['plain step']:.2f}x")
    print(f"  tracker every=10, 100 steps    {med['every=10 x100'] / med['plain x100']:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--models", default="mlp,cnn,transformer,gpt2")
    parser.add_argument("--tracker", default="mlp,cnn,transformer")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: leave torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in filter(None, args.models.split(",")):
        bench(name, args.reps if name != "gpt2" else max(3, args.reps // 5))
    for name in filter(None, args.tracker.split(",")):
        bench_tracker(name, args.reps)


if __name__ == "__main__":
    main()
