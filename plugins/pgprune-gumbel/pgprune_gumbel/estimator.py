"""The ``gumbel`` estimator: relaxed-Bernoulli masks, back-propagated through the model.

This is the conventional estimator the paper argues against (Sect. 3.2, Remarks 2-4), built
so that it can be measured against ``reinforce`` on equal terms.  Each step draws ``N``
logistic noises ``l = log u - log(1 - u)`` and forms the binary-concrete masks

    m = sigmoid((logit(s) + l) / tau)

(the two-class Gumbel-softmax, Maddison et al. 2016), evaluates the loss of the model under
all ``N`` masks in one batched forward with autograd on (``oracle.loss``), back-propagates
through the *frozen* model to the masks and on to ``s`` (the weights never require
gradients), and takes the same projected SGD step as ``reinforce``:
``s <- proj_C(s - lr_t * dL/ds)``.  The final mask is the same ranking of ``s`` under the
same budget, so the two differ only in how the gradient is estimated.

``straight_through`` uses the *hard* mask ``1[logit(s) + l > 0]`` in the forward pass (a
true Bernoulli(s) sample: the model sees binary masks, as at test time) and the soft mask's
gradient in the backward pass.  Either way the gradient is biased (it is the derivative of a
relaxed objective), and it costs a backward pass through the whole model that keeps every
activation alive: the price Remark 2 names and this plugin exists to measure.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from pgprune_core import StepContext
from pgprune_core.optim.sampled import SampledLossEstimator, Samples
from pgprune_core.optim.step_size import StepSizeConfig, projected_step

from .temperature import TemperatureSchedule, temperature

#: keeps log(u) and log(1 - u) finite
_UNIFORM_EPS = 1e-12


class GumbelEstimator(SampledLossEstimator):
    """Relaxed-Bernoulli (Gumbel-softmax) masks, gradient by back-propagation through the model."""

    name = "gumbel"

    class Config(StepSizeConfig):
        #: base learning rate, for a run of lr_reference_steps (x15 for runs under 1,000
        #: steps): 10x reinforce's, because the relaxed gradient has far less variance and
        #: a per-unit size of only ~1e-3 (see README, "Choosing the learning rate")
        lr: float = Field(default=2e-2, gt=0)
        #: relaxed masks per step (each costs one forward and one backward of the batch)
        n_samples: int = Field(default=2, ge=1)
        #: temperature at the first step
        tau_start: float = Field(default=1.0, gt=0)
        #: temperature at the last step
        tau_end: float = Field(default=0.1, gt=0)
        #: how the temperature goes from tau_start to tau_end
        tau_schedule: TemperatureSchedule = "exponential"
        #: hard (Bernoulli) masks in the forward pass, the soft masks' gradient backward
        straight_through: bool = False

        @model_validator(mode="after")
        def _annealing(self) -> GumbelEstimator.Config:
            if self.tau_end > self.tau_start:
                raise ValueError("tau_end must not exceed tau_start (the temperature anneals down)")
            return self

    config: Config
    uses_baseline = False
    skip_extra = ("grad_norm", "update_abs_mean")

    def tau(self, ctx: StepContext) -> float:
        """The temperature of this step."""
        cfg = self.config
        return temperature(ctx.step, ctx.total_steps, cfg.tau_start, cfg.tau_end, cfg.tau_schedule)

    def step_extra(self, ctx: StepContext) -> dict[str, float]:
        return {"tau": self.tau(ctx)}

    def draw(self, ctx: StepContext) -> Samples:
        """Relaxed masks of the free units' probabilities, evaluated with autograd on."""
        free = ~ctx.policy.fixed
        theta = ctx.policy.probs[free].requires_grad_(True)
        masks = self.relaxed_masks(theta, free, self.n_samples, self.tau(ctx), ctx.generator)
        losses = ctx.oracle.loss(ctx.batch, masks.to(torch.float32)).reshape(-1)
        return Samples(masks, losses, aux=(theta, free))

    def update(self, ctx: StepContext, samples: Samples, advantages: torch.Tensor,
               lr: float | None) -> dict[str, float]:
        assert lr is not None
        theta, free = samples.aux
        # gradients to theta only: nothing accumulates in any .grad of the model
        (grad_free,) = torch.autograd.grad(samples.losses.mean(), theta)
        ctx.oracle.count_backward(self.n_samples)
        grad = torch.zeros(len(ctx.policy), dtype=torch.float64)
        grad[free] = grad_free.detach().to(device="cpu", dtype=torch.float64)
        moved = projected_step(ctx.policy, ctx.project, lr * grad)
        return {"grad_norm": float(grad.norm()), "update_abs_mean": moved}

    def relaxed_masks(self, theta: torch.Tensor, free: torch.Tensor, n_samples: int,
                      tau: float, generator: torch.Generator) -> torch.Tensor:
        """float64 [n_samples, n]: binary-concrete masks of the free units' probabilities
        ``theta`` (differentiable), 1 on fixed units.  The noise comes from ``generator``
        only, so a resumed run draws the same masks."""
        uniform = torch.rand((n_samples, theta.numel()), generator=generator, dtype=torch.float64,
                             device=generator.device).to(theta.device)
        uniform = uniform.clamp(_UNIFORM_EPS, 1.0 - _UNIFORM_EPS)
        logits = torch.log(theta) - torch.log1p(-theta) + torch.log(uniform) - torch.log1p(-uniform)
        soft = torch.sigmoid(logits / tau)
        if self.config.straight_through:
            hard = (logits > 0).to(soft.dtype)
            soft = hard + (soft - soft.detach())  # exactly hard forward, soft backward
        masks = torch.ones((n_samples, free.numel()), dtype=torch.float64, device=theta.device)
        masks[:, free.to(theta.device)] = soft
        return masks
