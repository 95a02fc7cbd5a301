"""Compute-optimal sizing: Chinchilla's 20 tokens per parameter and parametric loss fits.

L(N, D) = E + A / N**alpha + B / D**beta, with N parameters and D training tokens; training
compute C = 6 N D FLOPs. Minimising L under fixed C gives
N_opt = G * (C / 6)**(beta / (alpha + beta)), G = (alpha * A / (beta * B))**(1 / (alpha + beta)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from archsmith.errors import ArchsmithError

TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022 (Chinchilla), Table 3: ~20 tokens per parameter at the optimum
FLOPS_PER_PARAM_TOKEN = 6  # forward 2 + backward 4 FLOPs per parameter per token (Kaplan et al. 2020)


@dataclass(frozen=True)
class LossFit:
    name: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str


FITS = {
    "hoffmann": LossFit("hoffmann", 1.69, 406.4, 410.7, 0.34, 0.28,
                        "Hoffmann et al. 2022, Training Compute-Optimal LLMs, approach 3 (eq. 10)"),
    "epoch": LossFit("epoch", 1.82, 482.01, 2085.43, 0.3478, 0.3658,
                     "Besiroglu et al. (Epoch AI) 2024, Chinchilla Scaling: A replication attempt, Table 1"),
}


def _fit(name: str) -> LossFit:
    if name not in FITS:
        raise ArchsmithError("fit", f"must be one of {', '.join(FITS)}; got {name!r}")
    return FITS[name]


def predicted_loss(params: float, tokens: float, fit: str = "hoffmann") -> float:
    """Predicted final pre-training loss (nats/token on the fit's data) for N params and D tokens."""
    if params <= 0 or tokens <= 0:
        raise ArchsmithError("params" if params <= 0 else "tokens", "must be positive")
    f = _fit(fit)
    return f.E + f.A / params**f.alpha + f.B / tokens**f.beta


def optimal_tokens(params: float) -> int:
    """Chinchilla rule of thumb: tokens to train `params` compute-optimally."""
    return int(TOKENS_PER_PARAM * params)


def optimal_for_compute(compute_flops: float, fit: str | None = None) -> dict[str, float]:
    """Parameters and tokens that minimise loss for a compute budget C (FLOPs).

    fit=None uses the 20 tokens/param rule (C = 6 N * 20 N); a fit name uses its closed form.
    """
    if compute_flops <= 0:
        raise ArchsmithError("compute", "must be positive")
    if fit is None:
        n = (compute_flops / (FLOPS_PER_PARAM_TOKEN * TOKENS_PER_PARAM)) ** 0.5
        d = TOKENS_PER_PARAM * n
        return {"params": n, "tokens": d, "tokens_per_param": TOKENS_PER_PARAM, "loss": predicted_loss(n, d)}
    f = _fit(fit)
    g = (f.alpha * f.A / (f.beta * f.B)) ** (1 / (f.alpha + f.beta))
    n = g * (compute_flops / FLOPS_PER_PARAM_TOKEN) ** (f.beta / (f.alpha + f.beta))
    d = compute_flops / (FLOPS_PER_PARAM_TOKEN * n)
    return {"params": n, "tokens": d, "tokens_per_param": d / n, "loss": predicted_loss(n, d, fit)}


def sizing(params: float, tokens: float | None = None) -> dict[str, float]:
    """Chinchilla view of one model size: optimal tokens, compute, predicted loss under both fits."""
    tokens = tokens or optimal_tokens(params)
    return {
        "params": params,
        "tokens": tokens,
        "chinchilla_tokens": optimal_tokens(params),
        "tokens_per_param": tokens / params,
        "compute_flops": FLOPS_PER_PARAM_TOKEN * params * tokens,
        "loss_hoffmann": predicted_loss(params, tokens, "hoffmann"),
        "loss_epoch": predicted_loss(params, tokens, "epoch"),
    }


def plan(compute_flops: float | None = None, params: float | None = None, tokens: float | None = None) -> dict[str, Any]:
    """Compute budget -> compute-optimal params and tokens (both fits); or a model size (+ tokens) -> `sizing`."""
    if (compute_flops is None) == (params is None):
        raise ArchsmithError("compute_flops", "give exactly one of compute_flops or params")
    if compute_flops is not None:
        if tokens is not None:
            raise ArchsmithError("tokens", "goes with params, not with compute_flops")
        return {"by": "compute", "compute_flops": compute_flops, "rule_of_thumb": optimal_for_compute(compute_flops),
                **{f"fit_{name}": optimal_for_compute(compute_flops, name) for name in FITS}}
    if params <= 0 or (tokens is not None and tokens <= 0):
        raise ArchsmithError("params" if params <= 0 else "tokens", "must be positive")
    return {"by": "params", **sizing(params, tokens)}
