"""The layer core: one discovery pass, one registry of rules, one list of layer kinds.

* :func:`discover` -- one forward pass of the model (on a few examples of a batch) gives a
  :class:`Plan`: every use of every parameter, with the rule that handles it, where the batch sits,
  the shapes, the module, the activation that follows; derived tensors (parametrizations, weight
  norm); parameters whose gradients it cannot see; where examples stop being independent.
* :mod:`foresight.layers.registry` -- the rules (:class:`Rule`), keyed by torch function; add
  your own with :func:`register_rule`.
* :mod:`foresight.layers.modules` -- rules for whole modules by type (EI graphs, dense builders,
  causal affine maps: ``nn.MultiheadAttention``, padded convolutions, 2020-style registrations);
* :mod:`foresight.layers.kinds` -- activations, normalisations, pass-through modules, weight
  modules: the one list of layer kinds;
* :mod:`foresight.layers.scan` -- one cheap forward pass (module calls, where parameters are
  read), for metrics that need the full plan only sometimes.

Every metric consumes the plan: :mod:`foresight.gns` for per-example gradient norms,
:mod:`foresight.ei` for the weight graph, :mod:`foresight.causal` and :mod:`foresight.ib` for the
layers and their activations.
"""

from foresight.layers import rules as _rules  # noqa: F401  (registers the built-in rules)
from foresight.layers.discover import DiscoveryError, discover
from foresight.layers.layout import Layout
from foresight.layers.plan import Derived, Operand, Plan, Step, Use
from foresight.layers.registry import FALLBACK, RULES, Rule, register_rule, unregister_rule

__all__ = [
    "discover",
    "DiscoveryError",
    "Plan",
    "Use",
    "Operand",
    "Derived",
    "Step",
    "Layout",
    "Rule",
    "RULES",
    "FALLBACK",
    "register_rule",
    "unregister_rule",
]
