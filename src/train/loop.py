"""The training loop: any nn.Module, any objective, one process or many.

    from archsmith.train.loop import Trainer, TrainConfig

    def objective(modules, batch):                  # modules.model, modules.<extra name>
        out = modules.model(batch["input_ids"], labels=batch["labels"])
        return out.loss, {"nll": out.loss.detach()}  # (scalar loss, metrics to average and log)

    trainer = Trainer(model, objective, train=samples, collate=collate, out="runs/x",
                      config=TrainConfig(steps=1000, global_batch=64, lr=3e-4),
                      eval_data=held_out, extra={"proj": nn.Linear(384, 768)})
    summary = trainer.fit(resume=False)

- `model`: a single-device nn.Module (archsmith.network.CausalLM, a transformers model, ...).
  Parallelism is applied from outside (`archsmith.train.parallel`): launched by torchrun
  (WORLD_SIZE > 1) the trainer joins the process group and wraps model + extras with DDP or
  FSDP2 (`config.strategy`; FSDP shards the repeated blocks of the model, then the root).
- `objective(modules, batch) -> (loss, metrics)`: `modules` holds `model` and every `extra`
  module as attributes (it is what DDP/FSDP wrap, so gradients of extras are synchronised too).
  `loss` is a scalar mean over the micro-batch; `metrics` maps names to scalars (tensors or
  floats), averaged over micro-batches and ranks and logged. A metric named `nll` is a token
  negative log-likelihood: evaluation rows then carry `perplexity = exp(mean nll)`. Modules the
  objective closes over (a teacher) are not trained, wrapped, sharded or saved: put them on this
  rank's device yourself (`archsmith.train.parallel.setup().device`). With DDP, `TrainConfig.unused_parameters` allows parameters that get no gradient (an
  encoder's pooler). tests/test_train.py trains a transformers BertForMaskedLM with a projection.
- `train` / `eval_data`: indexable sequences of samples, `collate(list of samples) -> batch` (a dict
  of tensors, moved to the device). Step s consumes samples [s*G, (s+1)*G) of a seeded, endless
  shuffle of `train` (G = global batch); rank r takes the r-th contiguous G/W of them in
  micro-batches of `micro_batch` (gradient accumulation makes up the rest). Batches are thus a
  function of the step: a resumed run continues on exactly the data it would have seen.
- `save_model(model, full_state_dict, directory)` / `load_model(model, directory)`: how the
  model is written into checkpoints and the final export (defaults in `checkpoint`:
  network.py's save_pretrained for a CausalLM, transformers' save_pretrained for an HF model).
- `count_tokens(batch) -> int` for tokens/s (default: elements of `batch["input_ids"]`).
- `on_eval(step, held-out loss) -> bool` after each evaluation past step 0: True stops the run there with
  stop_reason "pruned" (an architecture search's pruner deciding on the learning curve).
- `loggers(start_step) -> [logger, ...]`: experiment loggers (anything with `log(metrics, step)`: a wandb Run,
  `metrics.TensorBoardLog`) made on the main process when the loop starts; each metrics row reaches them as
  {"train/loss": ..., "eval/perplexity": ...} at its step, and they are closed at the end.
- `eval_extra(step) -> {name: value}` at each evaluation, on the main process with the model in eval mode: more
  held-out metrics (task accuracies) added to the evaluation's row and to `evals` (one process or DDP: an FSDP
  model's shards are on every rank).

What the trainer does with them: AdamW with weight decay on matrices only (no decay on norms,
biases, embeddings); linear warmup then cosine / linear / WSD decay to `min_lr_ratio * lr`;
gradient clipping; bf16 autocast (fp16 + GradScaler) where supported (FSDP: a mixed-precision
policy); optional activation checkpointing and torch.compile; evaluation every `eval_every`
steps with early stopping after `patience` evaluations without improvement; checkpoints every
`save_every` steps (atomic, keep-last-N, `fit(resume=True)` continues from the newest); SIGTERM or
SIGINT (Ctrl-C) stops after the current step with a checkpoint. It writes into `out`:

    metrics.jsonl    one JSON object per optimizer step: kind "train", step, loss, lr, tokens
                     (seen so far), tokens_per_s, grad_norm, elapsed_s, the objective's metrics;
                     on CUDA peak_allocated_bytes and peak_reserved_bytes (the allocator's peaks over
                     the step); evaluation rows have kind "eval", step, loss (+ perplexity)
    checkpoints/     see `archsmith.train.checkpoint`
    final/           the model at the end, through `save_model` (FSDP: consolidated on rank 0)
    loss.png         the loss curve; status.json: state (running, finished, stopped, failed), step
    tensorboard/     event files, when a TensorBoardLog is among the loggers
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from archsmith.errors import ArchsmithError
from archsmith.files import HeldDir, fd_path, remove_entry, usual_modes
from archsmith.progress import EVERY_S, Progress
from archsmith.train import checkpoint as ckpt
from archsmith.train import parallel
from archsmith.train.parallel.layout import Layout, Placed, whole
from archsmith.train.data import Order, rank_slice
from archsmith.train.memory import device_peaks
from archsmith.train.metrics import MetricsLog, write_status

SCHEDULES = ("cosine", "linear", "wsd")
FINAL = "final"  # RUN/final: the trained model as a Hugging Face model directory
STATUS_EVERY_S = EVERY_S  # status.json is rewritten at most this often between checkpoints
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # each ends the run after the current step, with a checkpoint
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

Objective = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, Any]]"]


@dataclass
class TrainConfig:
    """How to train. Batch sizes count samples (sequences for an LM); steps count optimizer steps."""

    steps: int
    global_batch: int  # samples per optimizer step, over all ranks and micro-steps
    micro_batch: int | None = None  # samples per forward/backward on one rank (default: global_batch / world)
    lr: float = 3e-4  # peak learning rate; a safe AdamW default for 10M-1B decoders (GPT-3, Llama papers use 1.5e-4 to 6e-4)
    min_lr_ratio: float = 0.1  # decay ends at 10% of the peak (Chinchilla, Llama)
    schedule: str = "cosine"
    warmup: int = 0  # linear warmup steps
    decay_fraction: float = 0.2  # WSD: the last 20% of steps decay linearly (Hägele et al. 2024)
    weight_decay: float = 0.1  # on matrices only (GPT-3, Llama)
    betas: tuple[float, float] = (0.9, 0.95)  # the LLM pre-training standard (GPT-3, Llama)
    eps: float = 1e-8  # AdamW's default
    clip: float | None = 1.0  # max global gradient norm; None disables
    precision: str = "auto"  # auto: bf16 on GPUs that have it, fp16 on other GPUs, fp32 on CPU
    strategy: str = "ddp"  # with more than one process: ddp or fsdp
    tp: int = 1  # tensor-parallel degree (archsmith.network.CausalLM only; see archsmith.train.parallel.layout)
    pp: int = 1  # pipeline-parallel degree
    cp: int = 1  # context-parallel degree (CUDA)
    pp_schedule: str = "1f1b"  # 1f1b, interleaved or gpipe
    save_every: int = 0  # 0: only at the end
    keep: int = 3  # checkpoints kept on disk (newest)
    eval_every: int = 0  # 0: only at the end (and at step 0)
    eval_samples: int = 256  # held-out samples per evaluation (the first ones, fixed)
    patience: int | None = None  # stop after this many evaluations without improvement
    min_delta: float = 0.0  # improvement smaller than this does not count
    checkpointing: bool = False  # activation checkpointing per block
    compile: bool = False  # torch.compile each block (or the whole model)
    seed: int = 0  # of the data order and of each rank's RNG (seed + rank)
    unused_parameters: bool = False  # DDP: some parameters get no gradient in a step (an encoder's unused pooler)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bitwise-repeatable runs on one device
    progress: bool = True  # a rich progress bar on rank 0 (stderr)

    def layout(self) -> Layout:
        return Layout(self.tp, self.pp, self.cp, self.pp_schedule)

    def sharded(self, world: int) -> bool:
        """State sharded across the `world` processes (FSDP, or a tp/pp/cp layout): checkpoints by DCP, no fp16."""
        return (self.strategy == "fsdp" and world > 1) or not self.layout().plain

    def check(self, world: int = 1) -> int:
        """Validate; returns the micro-batch. Raises ArchsmithError naming the field."""
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ArchsmithError(name, what)

        need(isinstance(self.steps, int) and 1 <= self.steps <= 10**9, "steps", f"must be in [1, 1e9], got {self.steps}")
        need(isinstance(self.global_batch, int) and self.global_batch >= 1, "batch", f"must be >= 1, got {self.global_batch}")
        need(self.strategy in parallel.STRATEGIES, "strategy", f"must be one of {', '.join(parallel.STRATEGIES)}; got {self.strategy!r}")
        layout = self.layout()
        layout.check(world, self.strategy)
        readers = layout.dp(world)  # processes that read different samples: the data-parallel ranks
        what = "processes" if layout.plain else "data-parallel ranks"
        need(self.global_batch % readers == 0, "batch", f"{self.global_batch} does not split over {readers} {what}")
        micro = self.micro_batch or self.global_batch // readers
        need(isinstance(micro, int) and 1 <= micro, "micro_batch", f"must be >= 1, got {micro}")
        need((self.global_batch // readers) % micro == 0, "micro_batch",
             f"{micro} must divide the per-rank batch {self.global_batch // readers} (batch {self.global_batch} / {readers} {what})")
        need(0 < self.lr <= 1, "lr", f"must be in (0, 1], got {self.lr}")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        need(self.schedule in SCHEDULES, "schedule", f"must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        need(isinstance(self.warmup, int) and self.warmup >= 0, "warmup", f"must be >= 0, got {self.warmup}")
        need(0 < self.decay_fraction <= 1, "decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.clip is None or self.clip > 0, "clip", f"must be > 0 (or None to disable), got {self.clip}")
        need(self.precision in PRECISIONS, "precision", f"must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        need(self.save_every >= 0 and self.eval_every >= 0, "save_every", "save_every and eval_every must be >= 0")
        need(self.keep >= 1, "keep", f"must be >= 1, got {self.keep}")
        need(self.eval_samples >= 1, "eval_samples", f"must be >= 1, got {self.eval_samples}")
        need(self.patience is None or self.patience >= 1, "patience", f"must be >= 1, got {self.patience}")
        return micro


def lr_factor(step: int, steps: int, warmup: int, schedule: str, min_ratio: float, decay_fraction: float) -> float:
    """Multiplier of the peak LR at optimizer step `step` (0-based): linear warmup to 1, then decay to min_ratio."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "wsd":
        decay_start = max(warmup, steps - math.ceil(decay_fraction * steps))
        if step < decay_start:
            return 1.0
        progress = (step - decay_start + 1) / max(1, steps - decay_start)
        return 1 - (1 - min_ratio) * min(1.0, progress)
    progress = min(1.0, (step - warmup + 1) / max(1, steps - warmup))
    if schedule == "linear":
        return 1 - (1 - min_ratio) * progress
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(modules: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices; none on norms, biases and embeddings (any dim < 2 or nn.Embedding)."""
    embeddings = {id(p) for m in modules.modules() if isinstance(m, nn.Embedding) for p in m.parameters(recurse=False)}
    decay, plain = [], []
    for p in modules.parameters():  # a tied lm_head appears once, as the embedding
        if p.requires_grad:
            (plain if p.ndim < 2 or id(p) in embeddings else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


def count_tokens(batch: Any) -> int:
    return int(batch["input_ids"].numel())


class TrainModules(nn.Module):
    """The model and the extra trainable modules; forward(batch) runs the objective. This is what DDP/FSDP wrap."""

    def __init__(self, model: nn.Module, extra: dict[str, nn.Module], objective: Objective):
        super().__init__()
        self.model = model
        for name, module in extra.items():
            if not name.isidentifier() or name == "model" or hasattr(self, name):
                raise ArchsmithError("extra", f"{name!r} cannot name an extra module (an identifier other than 'model')")
            self.add_module(name, module)
        self.__dict__["objective"] = objective  # not registered: modules it holds (a teacher) are not trained

    def forward(self, batch: Any):
        return self.objective(self, batch)


@dataclass
class _State:
    step: int = 0
    tokens: int = 0
    best_eval: float | None = None
    bad_evals: int = 0
    elapsed: float = 0.0
    stop_reason: str = "steps"
    evals: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Runs `config.steps` optimizer steps of `objective` over `train`; see the module docstring."""

    def __init__(self, model: nn.Module, objective: Objective, train: Sequence, collate: Callable[[list], Any],
                 out: str | Path | HeldDir, config: TrainConfig, eval_data: Sequence | None = None, extra: dict[str, nn.Module] | None = None,
                 save_model: ckpt.SaveModel = ckpt.save_model, load_model: ckpt.LoadModel = ckpt.load_model,
                 count_tokens: Callable[[Any], int] = count_tokens, on_eval: Callable[[int, float], bool] | None = None,
                 eval_extra: Callable[[int], dict[str, float]] | None = None, loggers: Callable[[int], list] | None = None):
        self.model, self.objective, self.train_data, self.collate = model, objective, train, collate
        self.out, self.config, self.extra = out, config, dict(extra or {})
        self.notes: list[str] = []  # what the run should tell its user (a torn checkpoint skipped on resume)
        self.eval_data = eval_data if eval_data is not None and len(eval_data) > 0 else None
        self.save_hook, self.load_hook, self.count_tokens = save_model, load_model, count_tokens
        self.on_eval = on_eval  # (step, held-out loss) after each evaluation past step 0; True stops the run ("pruned")
        self.eval_extra = eval_extra  # step -> more held-out metrics, on the main process
        self.loggers = loggers  # (the step the run starts from) -> loggers with log(metrics, step), on the main process
        self._stop_signal = 0  # the signal asking to stop (SIGTERM, SIGINT), 0 while none did
        self._status_at = time.monotonic()  # when status.json was last written
        self.peaks: dict[str, int] | None = None  # CUDA: the largest allocated and reserved bytes of any step (this rank)

    # ---- set-up -------------------------------------------------------------------------------
    def _precision(self, device: torch.device) -> tuple[torch.dtype | None, bool]:
        """(autocast / FSDP compute dtype or None for fp32, use a GradScaler)."""
        choice = self.config.precision
        if choice == "auto":
            choice = "fp32" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if choice == "fp16" and self.config.sharded(self.d.world):
            raise ArchsmithError("precision", "fp16 with FSDP is not supported (no sharded grad scaler here); use bf16 or fp32")
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[choice], choice == "fp16"

    def _prepare(self) -> None:
        cfg = self.config
        self.d = d = parallel.setup()
        self.micro = cfg.check(d.world)
        layout = cfg.layout()
        self.readers = layout.dp(d.world)  # data-parallel ranks: each reads its share of the global batch
        self.accum = cfg.global_batch // self.readers // self.micro
        self.sharded = cfg.sharded(d.world)  # checkpoints by DCP
        torch.manual_seed(cfg.seed + d.rank)
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(cfg.deterministic or self._was_deterministic)
        self.dtype, use_scaler = self._precision(d.device)
        model = self.model
        if cfg.checkpointing:
            if hasattr(model, "set_checkpointing"):
                model.set_checkpointing(True)
            elif hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable()
            else:
                raise ArchsmithError("checkpointing", f"{type(model).__name__} has no set_checkpointing or gradient_checkpointing_enable")
        self.placed, self.reader = None, d.rank
        if not layout.plain:
            from archsmith.network import CausalLM

            if not isinstance(model, CausalLM) or self.extra:
                raise ArchsmithError("tp", "tensor, pipeline and context parallel layouts train an archsmith.network.CausalLM "
                                           "alone (no extra modules); use --strategy ddp or fsdp for other models")
            self.placed = Placed(layout, model.to(d.device), d, self.dtype, self.accum)
            self.reader = self.placed.dp_rank
        self.modules = TrainModules(model, self.extra, self.objective).to(d.device)
        if cfg.compile:
            for block in parallel.blocks(model) or [model]:
                block.compile()
        if self.placed is not None:
            self.wrapped = self.modules
        else:
            self.wrapped = parallel.wrap(self.modules, cfg.strategy, d, self.dtype if self.sharded else None, cfg.unused_parameters)
        # the module whose gradients FSDP reduces (and which casts to the compute dtype); None without FSDP
        self.fsdp_root = (self.wrapped if self.sharded and self.placed is None else
                          self.model if self.placed is not None and self.placed.fsdp else None)
        # the fused kernel (CUDA, CPU): no model-sized temporaries in the step, the recipe archsmith.peak models
        fused = d.device.type == "cuda" or (d.device.type == "cpu" and not self.sharded)
        self.optimizer = torch.optim.AdamW(param_groups(self.modules, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                           eps=cfg.eps, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, partial(
            lr_factor, steps=cfg.steps, warmup=cfg.warmup, schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio,
            decay_fraction=cfg.decay_fraction))
        self.scaler = torch.amp.GradScaler(d.device.type) if use_scaler else None
        self.order = Order(len(self.train_data), cfg.seed)
        self.wrapped.train()  # transformers' from_pretrained returns eval mode

    def _autocast(self):
        if self.dtype is None or self.fsdp_root is not None:  # FSDP casts through its mixed-precision policy
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.dtype)

    def _to_device(self, batch: Any) -> Any:
        if isinstance(batch, dict):
            return {k: v.to(self.d.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch.to(self.d.device, non_blocking=True) if torch.is_tensor(batch) else batch

    # ---- the loop -----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to `config.steps` (or an early stop / SIGTERM); returns the run summary (also in summary.json)."""
        owned = not isinstance(self.out, HeldDir)
        self.run = HeldDir(self.out, "out") if owned else self.out
        try:
            return self._fit(resume)
        finally:
            if owned:
                self.run.close()

    def _fit(self, resume: bool) -> dict[str, Any]:
        self._prepare()
        d, cfg, run = self.d, self.config, self.run
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS} if _main_thread() else {}
        state = _State()
        try:
            try:
                if resume:
                    state = self._resume()
                elif ckpt.complete(run):
                    raise ArchsmithError("out", f"{run.path} holds another run; pass --resume to continue it or choose a new directory")
                elif d.main:  # a start that stopped before its first checkpoint: its rows are not this run's
                    run.remove("metrics.jsonl")
            except BaseException as exc:
                _failed(run, d, state.step, cfg.steps, exc)
                raise
            parallel.barrier(d)  # every rank has looked before rank 0 writes
            loggers = self.loggers(state.step) if self.loggers is not None and d.main else []
            log = MetricsLog(run, enabled=d.main, truncate_after=state.step if resume else 0, loggers=loggers)
            try:
                write_status(run, d, "running", state.step, cfg.steps, notes=self.notes)
                self._loop(state, log)
            except BaseException as exc:
                _failed(run, d, state.step, cfg.steps, exc, self.notes)
                raise
            finally:
                log.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            torch.use_deterministic_algorithms(self._was_deterministic)
        summary = self._finish(state)
        parallel.teardown(d, sync=True)
        return summary

    def _resume(self) -> _State:
        """Restore the newest checkpoint every rank can read whole; a torn or unreadable newer one is named in
        `notes` and skipped. Returns the loop state saved with the one restored."""
        found = ckpt.complete(self.run)
        if not found:
            raise ArchsmithError("resume", f"no complete checkpoint in {self.run.path / ckpt.CHECKPOINTS}; start without --resume")
        skipped = []
        for _, name in reversed(found):
            try:
                saved, problem = ckpt.read(self.run, name, self.d.rank), None
            except ArchsmithError as exc:
                saved, problem = None, str(exc).split(": ", 1)[-1]
            bad = parallel.all_reduce_sum(torch.tensor([float(problem is not None)], device=self.d.device), self.d)
            if bad.item() == 0:
                break
            skipped.append(problem or f"{ckpt.CHECKPOINTS}/{name} is unreadable on another rank")
        else:
            raise ArchsmithError("resume", "no checkpoint can be read whole: " + "; ".join(skipped))
        if skipped:
            self.notes.append("; ".join(skipped) + f"; resumed from {ckpt.CHECKPOINTS}/{name}")
            if self.d.main:
                print(f"archsmith: {self.notes[-1]}", file=sys.stderr, flush=True)
        saved = ckpt.load(self.run, name, self.modules, self.optimizer, self.d, self.sharded, self.load_hook, saved)
        self._check_resumable(saved)
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        return _State(**{**saved["state"], "stop_reason": "steps"})

    def _loop(self, state: _State, log: "MetricsLog") -> None:
        d, cfg = self.d, self.config
        if self.eval_data is not None and state.step == 0:
            self._evaluate(state, log)
        self._clock = time.perf_counter()  # a step's time runs from the previous step's end: logging counts, evaluations do not
        with Progress("training", cfg.steps, enabled=cfg.progress and d.main, done=state.step) as progress:
            while state.step < cfg.steps:
                row = self._step(state)
                log.write(row)
                progress.update(state.step, f"loss {row['loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s")
                if time.monotonic() - self._status_at >= STATUS_EVERY_S:  # watchers see the step between checkpoints
                    write_status(self.run, d, "running", state.step, cfg.steps, notes=self.notes)
                    self._status_at = time.monotonic()
                pause = time.perf_counter()
                stop = bool(row.pop("_stop"))
                done = state.step == cfg.steps
                if self.eval_data is not None and ((cfg.eval_every and state.step % cfg.eval_every == 0) or done or stop):
                    if self._evaluate(state, log):
                        state.stop_reason, stop = f"early stop: no improvement in {cfg.patience} evaluations", True
                    elif self.on_eval is not None and self.on_eval(state.step, state.evals[-1]["loss"]):
                        state.stop_reason, stop = "pruned", True
                if stop and state.stop_reason == "steps":
                    state.stop_reason = (f"stopped by {signal.Signals(self._stop_signal).name}" if self._stop_signal
                                         else "stopped by a signal to another process")
                if (cfg.save_every and state.step % cfg.save_every == 0) or done or stop:
                    self._save(state)
                if stop:
                    break
                self._clock += time.perf_counter() - pause

    def _step(self, state: _State) -> dict[str, Any]:
        d, cfg = self.d, self.config
        lr = self.optimizer.param_groups[0]["lr"]
        first, count = rank_slice(state.step, cfg.global_batch, self.reader, self.readers)
        indices = self.order.take(first, count)
        loss_sum = torch.zeros((), device=d.device)
        metric_sums: dict[str, torch.Tensor] = {}
        tokens = 0
        placed = self.placed
        if self.pipelined:  # the pipeline schedule runs every micro-batch of the step
            batch = self.collate([self.train_data[j] for j in indices])
            tokens += self.count_tokens(batch)
            with placed.loss_context(), self._autocast():
                loss = placed.pipeline_step(self._to_device(batch))
            # the last stage: next-token cross-entropy, the only objective a pipeline runs; zeros elsewhere (same columns)
            part = loss.detach().float() * self.accum if loss is not None else torch.zeros((), device=d.device)
            loss_sum += part
            metric_sums["nll"] = part
        else:
            for i in range(self.accum):
                batch = self.collate([self.train_data[j] for j in indices[i * self.micro:(i + 1) * self.micro]])
                tokens += self.count_tokens(batch)
                batch = self._to_device(batch)
                with self._sync(i == self.accum - 1), self._parallel_context(batch):
                    with self._autocast():
                        loss, metrics = self.wrapped(batch)
                    scaled = loss / self.accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += whole(loss).detach().float()
                for k, v in metrics.items():
                    metric_sums[k] = metric_sums.get(k, 0) + torch.as_tensor(whole(v), dtype=torch.float32, device=d.device).detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        norm = self._clip()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        peaks = device_peaks(d.device)  # CUDA: the allocator's peaks over this step, then reset
        if peaks:
            self.peaks = {k: max(v, (self.peaks or {}).get(k, 0)) for k, v in peaks.items()}
        names = sorted(metric_sums)
        synced = torch.stack([loss_sum / self.accum, *[metric_sums[k] / self.accum for k in names],
                              torch.tensor(float(tokens), device=d.device), torch.tensor(float(self._stop_signal), device=d.device)])
        parallel.all_reduce_sum(synced, d)
        values = synced.tolist()
        step_tokens, stop = int(values[-2]) // (d.world // self.readers), values[-1] > 0  # model-parallel ranks share samples
        now = time.perf_counter()
        seconds, self._clock = now - self._clock, now
        state.step += 1
        state.tokens += step_tokens
        state.elapsed += seconds
        owners = placed.owners if placed is not None else d.world  # ranks that computed the loss (pp: the last stage's)
        row = {"kind": "train", "step": state.step, "loss": values[0] / owners, "lr": lr, "tokens": state.tokens,
               "tokens_per_s": round(step_tokens / seconds, 1), "grad_norm": norm, "elapsed_s": round(state.elapsed, 3)}
        row.update({k: values[1 + i] / owners for i, k in enumerate(names) if k != "loss"})
        row.update(peaks or {})
        row["_stop"] = stop
        return row

    @property
    def pipelined(self) -> bool:
        """This run's layout has pipeline stages: the schedule runs the step's micro-batches."""
        return self.placed is not None and bool(self.placed.stages)

    def _sync(self, enabled: bool):
        """A context in which backward reduces gradients across data-parallel ranks (`enabled`) or only accumulates them."""
        if self.placed is not None:
            return parallel.gradient_sync(self.fsdp_root, "fsdp", self.d, enabled) if self.fsdp_root is not None else contextlib.nullcontext()
        return parallel.gradient_sync(self.wrapped, self.config.strategy, self.d, enabled)

    def _parallel_context(self, batch: Any):
        """Forward and backward of one micro-batch: vocabulary-parallel loss (tp) and sequence split (cp)."""
        if self.placed is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(self.placed.loss_context())
        stack.enter_context(self.placed.context_parallel(batch))
        return stack

    def _clip(self) -> float | None:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.config.clip is None:
            return None
        if self.placed is not None:
            return round(self.placed.clip(params, self.config.clip), 6)
        norm = torch.nn.utils.clip_grad_norm_(params, self.config.clip)
        if hasattr(norm, "full_tensor"):  # FSDP: a DTensor
            norm = norm.full_tensor()
        return round(float(norm), 6)

    @torch.no_grad()
    def _evaluate(self, state: _State, log: "MetricsLog") -> bool:
        """Mean loss (and perplexity) on the first eval_samples held-out samples; True when early stopping is due."""
        d, cfg = self.d, self.config
        n = min(cfg.eval_samples, len(self.eval_data))
        share = -(-n // self.readers)
        mine = list(range(self.reader * share, min(n, (self.reader + 1) * share)))
        self.wrapped.eval()
        sums: dict[str, torch.Tensor] = {}
        weight = torch.zeros((), device=d.device)
        for start in range(0, share, self.micro):  # the same number of forwards on every rank: FSDP's gathers are collective
            chunk = mine[start:start + self.micro]
            batch = self._to_device(self.collate([self.eval_data[i] for i in chunk or [0]]))  # [0]: a forward that counts 0
            with self._parallel_context(batch), self._autocast():
                loss, metrics, counts = self._eval_forward(batch)
            w = len(chunk) if counts else 0  # a pipeline stage before the last: no loss here
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0) + torch.as_tensor(whole(v), dtype=torch.float32, device=d.device) * w
            weight += w
        extra = self.eval_extra(state.step) if self.eval_extra is not None and d.main else {}
        self.wrapped.train()
        names = sorted(sums)
        synced = parallel.all_reduce_sum(torch.stack([*[sums[k] for k in names], weight]), d).tolist()
        means = {k: synced[i] / synced[-1] for i, k in enumerate(names)}
        row = {"kind": "eval", "step": state.step, "loss": means.pop("loss"), "samples": int(synced[-1]), **means}
        if "nll" in row:
            row["perplexity"] = math.exp(min(row["nll"], 700.0))  # exp overflows float beyond ~709
        log.write({**row, **extra})
        state.evals.append({"step": state.step, "loss": row["loss"], **({"perplexity": row["perplexity"]} if "perplexity" in row else {}),
                            **extra})
        if state.step == 0:
            return False
        if state.best_eval is None or row["loss"] < state.best_eval - cfg.min_delta:
            state.best_eval, state.bad_evals = row["loss"], 0
        else:
            state.bad_evals += 1
        return cfg.patience is not None and state.bad_evals >= cfg.patience

    def _eval_forward(self, batch: Any) -> tuple[Any, dict[str, Any], bool]:
        """(loss, metrics, whether they count) of one held-out micro-batch; through the pipeline the stages before the
        last have no loss: zeros that do not count."""
        if not self.pipelined:
            return (*self.wrapped(batch), True)
        from archsmith.network import next_token_loss

        logits = self.placed.pipeline_logits(batch["input_ids"])
        loss = next_token_loss(logits, batch["labels"]) if logits is not None else torch.zeros((), device=self.d.device)
        return loss, {"nll": loss}, logits is not None

    # ---- checkpoints and the end --------------------------------------------------------------
    def _save(self, state: _State) -> None:
        trainer_state = {"scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
                         "state": asdict(state), "config": asdict(self.config), "world": self.d.world}
        ckpt.save(self.run, state.step, trainer_state, self.modules, self.optimizer, self.d, self.sharded, self.save_hook,
                  self.config.keep)
        write_status(self.run, self.d, "running", state.step, self.config.steps, notes=self.notes)

    def _check_resumable(self, saved: dict[str, Any]) -> None:
        """The saved run must have had the same global batch, seed and schedule shape (data and LR are functions of them)."""
        old = saved["config"]
        for name in ("global_batch", "seed", "schedule", "warmup", "lr"):
            if old[name] != getattr(self.config, name):
                raise ArchsmithError(name, f"the checkpoint was trained with {name}={old[name]}; resume with the same value")

    def _finish(self, state: _State) -> dict[str, Any]:
        d, run = self.d, self.run
        if self.placed is not None:  # collective: every stage's tensors, whole, on rank 0
            full = {k[len("model."):]: v for k, v in self.placed.full_state(self.modules).items() if k.startswith("model.")}
        else:
            full = ckpt.full_model_state(self.modules, self.sharded)  # collective under FSDP
        summary: dict[str, Any] = {}
        if d.main:
            from archsmith.train.metrics import loss_curve, read_metrics

            final = run.path / FINAL
            with run.dir(".") as top:  # written beside, then renamed into place: never half a final/
                tmp = f".{FINAL}.tmp"
                remove_entry(top, tmp)
                os.mkdir(tmp, 0o777, dir_fd=top)
                with run.dir(tmp) as fd:
                    self.save_hook(self.model, full, Path(fd_path(fd)) / FINAL)
                    usual_modes(fd)
                run.remove(FINAL)
                run.rename(f"{tmp}/{FINAL}", FINAL)
                remove_entry(top, tmp)
            rows = read_metrics(run)
            run.write("loss.png", loss_curve(rows))
            train_rows = [r for r in rows if r["kind"] == "train"]
            first, last = (train_rows[0], train_rows[-1]) if train_rows else ({}, {})
            # steady state: steps after the first (which pays for allocations and compilation)
            steady = (last["tokens"] - first["tokens"]) / max(1e-9, last["elapsed_s"] - first["elapsed_s"]) if len(train_rows) > 1 else None
            strategy, layout = self.config.strategy if d.world > 1 else "single", self.config.layout()
            summary = {
                "steps": state.step, "tokens": state.tokens, "stop_reason": state.stop_reason,
                "first_loss": first.get("loss"), "last_loss": last.get("loss"), "evals": state.evals,
                "best_eval_loss": state.best_eval, "tokens_per_s": round(steady, 1) if steady else first.get("tokens_per_s"),
                "elapsed_s": round(state.elapsed, 3), "world": d.world, "strategy": strategy,
                "layout": strategy if layout.plain else layout.describe(d.world),  # tp=2 x pp=2 (1f1b), or the strategy
                "precision": str(self.dtype).replace("torch.", "") if self.dtype else "float32",
                "micro_batch": self.micro, "accumulation": self.accum, "device": str(d.device),
                "peak_allocated_bytes": (self.peaks or {}).get("peak_allocated_bytes"),
                "peak_reserved_bytes": (self.peaks or {}).get("peak_reserved_bytes"),
                "checkpoints": [name for _, name in ckpt.complete(run)], "final": str(final), "notes": self.notes,
            }
            run.write("summary.json", json.dumps(summary, indent=2) + "\n")
        write_status(run, d, "stopped" if state.stop_reason.startswith("stopped") else "finished", state.step, self.config.steps,
                     notes=self.notes)
        return summary

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signum  # the step ends, a checkpoint is written, the loop stops


def _failed(run: HeldDir, d, step: int, steps: int, exc: BaseException, notes: list[str] | None = None) -> None:
    """status.json says failed, with the one-line error; nothing when the run directory itself is what failed."""
    try:
        write_status(run, d, "failed", step, steps, error=_one_line(exc), notes=notes)
    except ArchsmithError:
        pass


def _one_line(exc: BaseException) -> str:
    """An exception as status.json's one-line error: an ArchsmithError as it reads, anything else with its type."""
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return text if isinstance(exc, ArchsmithError) else f"{type(exc).__name__}: {text}"


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
