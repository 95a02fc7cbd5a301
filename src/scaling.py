"""Compute-optimal sizing: Chinchilla's 20 tokens per parameter and parametric loss fits.

L(N, D) = E + A / N**alpha + B / D**beta, with N parameters and D training tokens; training
compute C = 6 N D FLOPs. Minimising L under fixed C gives
N_opt = G * (C / 6)**(beta / (alpha + beta)), G = (alpha * A / (beta * B))**(1 / (alpha + beta)).

Also the training recipe's fits (DeepSeek LLM's global batch and peak learning rate as functions of compute, the
warmup and decay every plan uses) and data-constrained sizing (Muennighoff et al. 2023: what repeated epochs and
parameters beyond the unique data's optimum are worth, and the size and epochs that minimise loss under both).
"""

from __future__ import annotations

import math
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


# ---- batch size, learning rate, schedule ------------------------------------------------------------
# DeepSeek LLM (DeepSeek-AI 2024, "DeepSeek LLM: Scaling Open-Source Language Models with Longtermism", sec. 3.1,
# eq. 1): the near-optimal global batch and peak learning rate of AdamW runs, fitted on runs of 1e17 to 3e20 FLOPs, as
# functions of the compute budget C = M x D, M the non-embedding training FLOPs per token (attention included), D tokens.
BATCH_FIT = (0.2920, 0.3271)  # B_opt = 0.2920 C^0.3271 tokens per step
LR_FIT = (0.3118, -0.1250)  # eta_opt = 0.3118 C^-0.1250
BATCH_LR_SOURCE = ("DeepSeek LLM (2024) batch-size and learning-rate scaling fits, B_opt = 0.2920 C^0.3271 tokens and "
                   "eta_opt = 0.3118 C^-0.1250, C = non-embedding FLOPs per token x tokens")
MAX_BATCH_TOKENS = 1 << 24  # 16.8M tokens: Llama 3 405B's final 16M-token batch, the largest dense batch published
LR_RANGE = (6e-5, 3e-3)  # Llama 3 405B trained at 8e-5; small decoders train stably up to ~3e-3 (MobileLLM, Pythia-70M 1e-3)
MAX_WARMUP = 2000  # warmup steps: 5% of the run, at most 2000 (DeepSeek LLM and Llama 2 warm up for 2000 steps)
MIN_LR_RATIO = 0.1  # cosine decay to 10% of the peak (Chinchilla, Llama)
SCHEDULE = "cosine"


def non_embedding_flops(spec: Any, seq: int) -> int:
    """DeepSeek LLM's M: training FLOPs per token of `spec` at `seq` tokens per sequence, without the embedding and the
    output layer; attention scores included (causal). For MoE, the experts a token runs."""
    from archsmith import estimate as est

    f = est.forward_flops(spec, 1, seq)
    return round(3 * (f["linear"] + f["attention"]) / seq)


def batch_and_lr(compute_flops: float) -> dict[str, Any]:
    """The fits' global batch (tokens per step) and peak learning rate for a run of `compute_flops` (M x D), each also
    clamped: the batch to at most MAX_BATCH_TOKENS, the learning rate to LR_RANGE (rounded to 3 significant digits)."""
    if compute_flops <= 0:
        raise ArchsmithError("compute", "must be positive")
    batch = BATCH_FIT[0] * compute_flops ** BATCH_FIT[1]
    lr = LR_FIT[0] * compute_flops ** LR_FIT[1]
    clamped_lr = float(f"{min(max(lr, LR_RANGE[0]), LR_RANGE[1]):.3g}")
    return {"compute_flops": compute_flops, "batch_tokens_fit": batch, "batch_tokens": min(batch, MAX_BATCH_TOKENS),
            "batch_clamped": batch > MAX_BATCH_TOKENS, "lr_fit": lr, "lr": clamped_lr,
            "lr_clamped": not LR_RANGE[0] <= lr <= LR_RANGE[1], "source": BATCH_LR_SOURCE}


def warmup_steps(steps: int) -> int:
    """Linear warmup steps for a run of `steps` optimizer steps: 5% of them, at most MAX_WARMUP."""
    return min(MAX_WARMUP, steps // 20)


def default_lr(spec: Any, seq: int, steps: int, batch: int) -> float:
    """The peak learning rate of a fresh run of `steps` steps of `batch` sequences of `seq` tokens (`batch_and_lr`)."""
    return batch_and_lr(non_embedding_flops(spec, seq) * steps * batch * seq)["lr"]


# ---- data-constrained sizing --------------------------------------------------------------------------
# Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (NeurIPS), eq. 5: repeated tokens and parameters
# beyond the compute-optimal size for the unique data are worth less, decaying with constants fitted on 400 runs.
R_STAR_DATA = 15.4  # R*_D (15.387): epochs over which the value of repeated data decays
R_STAR_PARAMS = 5.3  # R*_N (5.309): the same for excess parameters
VALUABLE_EPOCHS = 4  # up to ~4 epochs, repeated data trains almost as well as unique data (Muennighoff et al., sec. 5)
DATA_CONSTRAINED_FIT = "epoch"  # the base loss L(N, D): the Chinchilla replication whose optimum is ~20 tokens/param
DATA_CONSTRAINED_SOURCE = ("Muennighoff et al. 2023 (Scaling Data-Constrained Language Models): D' = U + U R*_D (1 - e^(-R_D/R*_D)), "
                           f"R*_D = {R_STAR_DATA}, N' likewise with R*_N = {R_STAR_PARAMS}, on the loss fit of "
                           f"{FITS[DATA_CONSTRAINED_FIT].source}")


def effective_tokens(tokens: float, unique: float) -> float:
    """D': what `tokens` training tokens drawn from `unique` unique tokens are worth in unique tokens.

    D' = U + U R*_D (1 - exp(-R_D / R*_D)) with R_D = D / U - 1 repeated epochs; D itself when D <= U."""
    if tokens <= 0 or unique <= 0:
        raise ArchsmithError("tokens" if tokens <= 0 else "unique_tokens", "must be positive")
    if tokens <= unique:
        return float(tokens)
    repeats = tokens / unique - 1
    return unique + unique * R_STAR_DATA * (1 - math.exp(-repeats / R_STAR_DATA))


def effective_params(params: float, unique: float) -> float:
    """N': what `params` parameters are worth when the data holds `unique` unique tokens.

    U_N = min(N, U / 20) (the compute-optimal size for the unique data, Chinchilla's 20 tokens per parameter);
    N' = U_N + U_N R*_N (1 - exp(-R_N / R*_N)) with R_N = N / U_N - 1."""
    if params <= 0 or unique <= 0:
        raise ArchsmithError("params" if params <= 0 else "unique_tokens", "must be positive")
    base = min(params, unique / TOKENS_PER_PARAM)
    excess = params / base - 1
    return base + base * R_STAR_PARAMS * (1 - math.exp(-excess / R_STAR_PARAMS))


def data_constrained_loss(params: float, tokens: float, unique: float, fit: str = DATA_CONSTRAINED_FIT) -> float:
    """Predicted loss of N params trained on D tokens drawn from U unique tokens: L(N', D') of the loss fit."""
    return predicted_loss(effective_params(params, unique), effective_tokens(tokens, unique), fit)


def data_constrained_optimum(compute_flops: float, unique: float, fit: str = DATA_CONSTRAINED_FIT) -> dict[str, float]:
    """Params and tokens (C = 6 N D) that minimise `data_constrained_loss` for a compute budget and the unique data:
    a grid over log N (100 points per decade), then golden-section search between the best point's neighbours."""
    if compute_flops <= 0 or unique <= 0:
        raise ArchsmithError("compute" if compute_flops <= 0 else "unique_tokens", "must be positive")

    def loss(log_n: float) -> float:
        n = 10**log_n
        return data_constrained_loss(n, compute_flops / (FLOPS_PER_PARAM_TOKEN * n), unique, fit)

    grid = [5 + i / 100 for i in range(801)]  # 1e5 to 1e13 parameters
    best = min(range(len(grid)), key=lambda i: loss(grid[i]))
    low, high = grid[max(0, best - 1)], grid[min(len(grid) - 1, best + 1)]
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        low, high = (low, b) if loss(a) <= loss(b) else (a, high)
    n = 10 ** ((low + high) / 2)
    d = compute_flops / (FLOPS_PER_PARAM_TOKEN * n)
    return {"params": n, "tokens": d, "epochs": d / unique, "tokens_per_param": d / n,
            "loss": data_constrained_loss(n, d, unique, fit)}


def data_constrained(params: float, tokens: float, unique: float, fit: str = DATA_CONSTRAINED_FIT) -> dict[str, Any]:
    """A planned run (N params, D tokens) on U unique tokens: epochs, what the repetition is worth (D', N'), the value
    lost to it (tokens, and the loss above the same run on D unique tokens), and the law's optimum for the same compute."""
    worth = effective_tokens(tokens, unique)
    worth_params = effective_params(params, unique)
    loss = predicted_loss(worth_params, worth, fit)
    unique_loss = data_constrained_loss(params, tokens, max(tokens, unique), fit)  # the same run, every token unique
    compute = FLOPS_PER_PARAM_TOKEN * params * tokens
    return {
        "unique_tokens": unique, "tokens": tokens, "params": params, "epochs": tokens / unique,
        "effective_tokens": worth, "tokens_lost": tokens - worth, "tokens_lost_fraction": 1 - worth / tokens,
        "effective_params": worth_params, "params_lost_fraction": 1 - worth_params / params,
        "loss": loss, "loss_if_unique": unique_loss, "loss_penalty": loss - unique_loss,
        "optimum": data_constrained_optimum(compute, unique, fit), "compute_flops": compute,
        "fit": fit, "source": DATA_CONSTRAINED_SOURCE,
    }
