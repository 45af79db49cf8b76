r"""Per-example gradient contributions of one use to one parameter, and their inner products.

A use contributes to the gradient of each parameter it reads, separately for every example
:math:`b`. The squared norm of a parameter's per-example gradient is the squared norm of the sum of
its contributions,

.. math::

    \lVert g_b \rVert^2 = \sum_u \lVert c^{(u)}_b \rVert^2
    + 2 \sum_{u < v} \langle c^{(u)}_b, c^{(v)}_b \rangle,

so a contribution need only offer its squared norm and its inner product with another. Three forms
keep them cheap:

* :class:`Dense` -- the contribution itself, ``[B, *shape]``;
* :class:`Outer` -- :math:`\sum_t u_{bt} v_{bt}^\top` with ``u [B, T, m]``, ``v [B, T, n]`` (a
  linear layer: output gradients times inputs); never formed when a Gram identity is cheaper:
  :math:`\langle U_1^\top V_1, U_2^\top V_2 \rangle = \langle U_1 U_2^\top, V_1 V_2^\top \rangle`;
* :class:`Rows` -- :math:`\sum_t e_{i_{bt}} v_{bt}^\top` (an embedding: rows of a table), whose
  inner   products with the others are gathers, so that a tied embedding and output layer (GPT-2's
  ``wte``) never form a ``[B, vocabulary, features]`` tensor.

Every form can also ``dense()`` itself. All products accumulate in float32 or better.

>>> import torch
>>> u, v = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
>>> c = Outer(u, v)
>>> torch.allclose(c.sq(), c.dense().square().sum((1, 2)), rtol=1e-4)
True
>>> r = Rows(torch.tensor([[0, 2, 0], [1, 1, 3]]), torch.randn(2, 3, 5), rows=4)
>>> torch.allclose(dot(r, Dense(r.dense())), r.sq(), rtol=1e-4)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Dense", "Outer", "Rows", "Contribution", "dot", "sq_norm_of_sum", "outer_sq_norms"]


def _sq(x: Tensor) -> Tensor:
    """Squared Euclidean norm of each example (all dims after the first)."""
    return torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1).square()


def _up(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


@dataclass
class Dense:
    """A contribution given in full, ``[B, *shape]``."""

    t: Tensor

    def dense(self) -> Tensor:
        return self.t

    def sq(self) -> Tensor:
        return _sq(_up(self.t))


@dataclass
class Outer:
    r""":math:`\sum_t u_{bt} v_{bt}^\top`: ``(m, n)`` per example (``transpose``: ``(n, m)``)."""

    u: Tensor  # [B, T, m]
    v: Tensor  # [B, T, n]
    transpose: bool = False

    def transposed(self) -> Outer:
        return Outer(self.u, self.v, not self.transpose)

    def dense(self) -> Tensor:
        u, v = _up(self.u), _up(self.v)
        if self.transpose:
            return torch.bmm(v.transpose(1, 2), u)
        return torch.bmm(u.transpose(1, 2), v)

    def sq(self) -> Tensor:
        return outer_sq_norms(_up(self.u), _up(self.v))


@dataclass
class Rows:
    r""":math:`\sum_t e_{i_{bt}} v_{bt}^\top`: row ``i`` of a ``(rows, n)`` table gets ``v``."""

    idx: Tensor  # [B, T] int64
    v: Tensor  # [B, T, n]
    rows: int

    def _summed(self) -> tuple[Tensor, Tensor]:
        """Per (example, row) sums: ``(keys, sums)`` with key = b * rows + i."""
        bsz, t = self.idx.shape
        keys = (torch.arange(bsz, device=self.idx.device)[:, None] * self.rows + self.idx)
        keys = keys.reshape(-1)
        v = _up(self.v).reshape(bsz * t, -1)
        uniq, inverse = torch.unique(keys, return_inverse=True)
        sums = v.new_zeros(uniq.shape[0], v.shape[1]).index_add_(0, inverse, v)
        return uniq, sums

    def dense(self) -> Tensor:
        bsz = self.idx.shape[0]
        keys, sums = self._summed()
        full = sums.new_zeros(bsz * self.rows, sums.shape[1]).index_copy_(0, keys, sums)
        return full.reshape(bsz, self.rows, -1)

    def sq(self) -> Tensor:
        keys, sums = self._summed()
        owner = torch.div(keys, self.rows, rounding_mode="floor")
        return sums.new_zeros(self.idx.shape[0]).index_add_(0, owner, sums.square().sum(1))


Contribution = Dense | Outer | Rows


def outer_sq_norms(a: Tensor, g: Tensor) -> Tensor:
    r""":math:`\lVert \sum_t g_{bt} a_{bt}^\top \rVert_F^2` for ``a [B, T, I]``, ``g [B, T, K]``.

    The Gram form (cost :math:`B T^2 (I+K)`) or the materialised product (:math:`B T I K`),
    whichever is cheaper; :math:`T = 1` is Goodfellow's
    :math:`\lVert g_b\rVert^2\lVert a_b\rVert^2`.

    >>> a, g = torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    >>> ref = torch.einsum("bti,btk->bik", a, g).square().sum((1, 2))
    >>> torch.allclose(outer_sq_norms(a, g), ref)
    True
    """
    t, i, k = a.shape[1], a.shape[2], g.shape[2]
    if t == 1:
        return _sq(a) * _sq(g)
    if t * (i + k) < i * k:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return _sq(torch.bmm(g.transpose(1, 2), a))


def _outer_dot(x: Outer, y: Outer) -> Tensor:
    # <U1^T V1, U2^T V2> (after aligning the orientation of y with x)
    u1, v1 = _up(x.u), _up(x.v)
    u2, v2 = (_up(y.u), _up(y.v)) if x.transpose == y.transpose else (_up(y.v), _up(y.u))
    t1, t2 = u1.shape[1], u2.shape[1]
    m, n = u1.shape[2], v1.shape[2]
    if t1 * t2 * (m + n) <= (t1 + t2) * m * n:
        return (torch.bmm(u1, u2.transpose(1, 2)) * torch.bmm(v1, v2.transpose(1, 2))).sum((1, 2))
    a = torch.bmm(u1.transpose(1, 2), v1)
    b = torch.bmm(u2.transpose(1, 2), v2)
    return (a * b).sum((1, 2))


def _rows_dot(x: Rows, y: Rows) -> Tensor:
    same = (x.idx[:, :, None] == y.idx[:, None, :]).to(_up(x.v).dtype)
    return (same * torch.bmm(_up(x.v), _up(y.v).transpose(1, 2))).sum((1, 2))


def _rows_outer_dot(r: Rows, o: Outer) -> Tensor:
    # the table is (rows, n): orient o so that its "u" side indexes the rows
    u, v = (_up(o.u), _up(o.v)) if not o.transpose else (_up(o.v), _up(o.u))
    # sum_{t,s} u[s, i_t] (v_r[t] . v[s])
    gathered = torch.gather(u, 2, r.idx[:, None, :].expand(-1, u.shape[1], -1))  # [B, S, T]
    return (gathered * torch.bmm(v, _up(r.v).transpose(1, 2))).sum((1, 2))


def dot(x: Contribution, y: Contribution) -> Tensor:
    """Per-example inner product ``[B]`` of two contributions to the same parameter."""
    if isinstance(x, Outer) and isinstance(y, Outer):
        return _outer_dot(x, y)
    if isinstance(x, Rows) and isinstance(y, Rows):
        return _rows_dot(x, y)
    if isinstance(x, Rows) and isinstance(y, Outer):
        return _rows_outer_dot(x, y)
    if isinstance(x, Outer) and isinstance(y, Rows):
        return _rows_outer_dot(y, x)
    a, b = _up(x.dense()), _up(y.dense())
    return (a.reshape(a.shape[0], -1) * b.reshape(b.shape[0], -1)).sum(1)


def sq_norm_of_sum(parts: list[Contribution], shape: tuple[int, ...]) -> Tensor:
    """``[B]``: squared norm of the per-example sum of ``parts`` (dense ones summed first)."""
    dense = [p for p in parts if isinstance(p, Dense)]
    rest: list[Contribution] = [p for p in parts if not isinstance(p, Dense)]
    if dense:
        total = dense[0].t.reshape(dense[0].t.shape[0], *shape)
        for d in dense[1:]:
            total = total + d.t.reshape(total.shape)
        rest.append(Dense(total))
    out = rest[0].sq()
    for i, x in enumerate(rest):
        if i:
            out = out + x.sq()
        for y in rest[i + 1 :]:
            out = out + 2 * dot(x, y)
    return out
