"""Per-step products whose weight gradient is formed once per batch.

A decoder runs its cells one time step at a time, so autograd forms each weight's gradient
as T thin products ([out, B] x [B, in]) and T additions over the whole weight. ``StepProducts``
keeps each step's input and output gradient and forms it as one product over all steps
([out, T*B] x [T*B, in]): the same gradient, summed in another order. The input gradients
are computed as usual, step by step.
"""
from __future__ import annotations

import torch
from torch import autograd


class _GatherGradient(autograd.Function):
    """Identity on the weight in the forward pass; in the backward pass (which runs
    after every step's backward) the weight's gradient from all steps at once."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, owner: "StepProducts") -> torch.Tensor:
        ctx.owner = owner
        ctx.set_materialize_grads(False)
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, _unused: torch.Tensor | None):
        owner = ctx.owner
        steps = [(g, x) for g, x in zip(owner.grads, owner.inputs) if g is not None]
        owner.grads = []
        owner.inputs = []
        if not steps:
            return None, None
        grads = torch.cat([g for g, _ in steps])  # [T*B, out]
        inputs = torch.cat([x for _, x in steps]).to(grads.dtype)  # [T*B, in]
        return (grads.t() @ inputs).to(owner.weight_dtype), None


class _StepProduct(autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, owner: "StepProducts"
                ) -> torch.Tensor:
        ctx.owner = owner
        ctx.index = len(owner.inputs)
        ctx.x_dtype = x.dtype
        ctx.save_for_backward(weight)
        out = x @ weight.t()  # under autocast: in its dtype
        owner.inputs.append(x)
        owner.grads.append(None)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, = ctx.saved_tensors
        ctx.owner.grads[ctx.index] = grad
        return (grad @ weight.to(grad.dtype)).to(ctx.x_dtype), None, None


class StepProducts:
    """``x_t @ weight.T`` for the steps t of one batch (make one per forward pass)."""

    def __init__(self, weight: torch.Tensor):
        self.inputs: list[torch.Tensor] = []
        self.grads: list[torch.Tensor | None] = []
        self.weight_dtype = weight.dtype
        self.weight = _GatherGradient.apply(weight, self) if weight.requires_grad else weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not self.weight.requires_grad:
            return x @ self.weight.t()
        return _StepProduct.apply(x, self.weight, self)
