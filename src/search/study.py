"""An Optuna study over a factory's design space: held-out loss against size, sizes measured before training.

Each trial draws the factory's keyword arguments and the training settings from the space, builds the model on
the meta device (on the CPU when the factory refuses meta) and measures it exactly: parameters, forward FLOPs of
one batch (FlopCounterMode), and training memory (fp32 weights, gradients and AdamW's two moments, 16 bytes per
parameter, plus the activations the forward saves for backward). A trial over `max_params` / `max_memory` is
pruned there and never trained. The others run `steps` steps of archsmith's training loop (`train.loop.Trainer`)
on the `--data` batches into `DIR/trials/<number>` (metrics.jsonl, loss.png), evaluated on the held-out batches
REPORTS times; Optuna's pruners (Hyperband or successive halving) stop poor learning curves early.
Optuna's pruners serve single-objective studies only, so the curves live in a companion study (`archsmith-loss`)
beside the multi-objective one (`archsmith`: held-out loss, size) in the same SQLite file, `DIR/study.db`.
With `metric="accuracy"` (or a task score, as the decoder search's harness tasks) the first objective is the held-out
error, 1 - accuracy, measured once a trial has trained; pruning still follows the loss curve.
Running again with the same space resumes the study: `--trials` is the total, so a larger number extends it.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

from archsmith.errors import ArchsmithError
from archsmith.search.space import Space, read_space

OBJECTIVES = ("params", "flops", "latency")  # the second objective: parameters, forward FLOPs per batch, CPU ms per batch
METRICS = ("loss", "accuracy")  # the first: held-out loss, or 1 - held-out accuracy (class targets)
LOSSES = ("cross_entropy", "mse")
PRUNERS = ("hyperband", "halving", "none")
HELDOUT = 2  # the data's first batches are held out for evaluation
REPORTS = 6  # held-out evaluations per trial: the points where a pruner may stop it
LATENCY_RUNS = 5
STUDY, CURVES, DATABASE = "archsmith", "archsmith-loss", "study.db"
TRIALS = "trials"  # out/trials/<number>: each trained trial's run directory (metrics.jsonl, loss.png, final/)
TARGET = "__target"  # the target's key in a training-loop batch
BYTES_PER_PARAM = 16  # fp32 weights, gradients and AdamW's two moments
MAX_TRIALS, MAX_STEPS = 10_000, 1_000_000


class Diverged(Exception):
    """The training loss became NaN or infinite."""


# ---- one trial's size, before any training --------------------------------------------------------

def _build(factory: Callable, kwargs: dict[str, Any], device: str, seed: int):
    import torch

    torch.manual_seed(seed)
    with torch.device(device):
        module = factory(**kwargs)
    if not isinstance(module, torch.nn.Module):
        raise ArchsmithError("model", f"the factory must return an nn.Module, got {type(module).__name__}")
    return module


def _to(batch, device: str):
    return {k: v.to(device) for k, v in batch.items()} if isinstance(batch, dict) else tuple(v.to(device) for v in batch)


def measure(factory: Callable, kwargs: dict[str, Any], example, seed: int) -> dict[str, Any]:
    """Parameters, forward FLOPs of `example` and training memory of the factory's model at `kwargs`, on the meta
    device where the factory and the forward allow it (no memory, no weights), else on the CPU."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from archsmith.compress.modules import param_count, run

    for device in ("meta", "cpu"):
        try:
            module = _build(factory, kwargs, device, seed)
        except ArchsmithError:
            raise
        except Exception:
            if device == "cpu":
                raise
            continue
        weights = {id(p) for p in module.parameters()}
        saved = 0

        def pack(t):
            nonlocal saved
            if id(t) not in weights and id(getattr(t, "_base", None)) not in weights:
                saved += t.numel() * t.element_size()
            return t

        try:
            with FlopCounterMode(display=False) as counter, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                run(module, _to(example, device))
        except Exception:
            if device == "cpu":
                raise
            continue
        params = param_count(module)
        return {"params": params, "flops": int(counter.get_total_flops()), "activation_bytes": saved,
                "memory_bytes": params * BYTES_PER_PARAM + saved, "measured_on": device}
    raise AssertionError("unreachable")


# ---- one trial's training --------------------------------------------------------------------------

def loss_of(output, target, kind: str):
    """The batch loss; errors name `loss` with the shapes that do not fit."""
    import torch.nn.functional as F

    from archsmith.compress.modules import outputs

    found = outputs(output)
    if not found:
        raise ArchsmithError("loss", "the model returned no floating-point tensor")
    out = found[0]
    if kind == "mse":
        if out.shape != target.shape or not target.is_floating_point():
            raise ArchsmithError("loss", f"mse needs a float target of the output's shape {tuple(out.shape)}; "
                                         f"got {target.dtype} {tuple(target.shape)}")
        return F.mse_loss(out, target)
    if target.is_floating_point():
        raise ArchsmithError("loss", f"cross_entropy needs integer class targets; got {target.dtype}")
    if out.shape[:-1] == target.shape:  # classes last: (N, C), (N, S, C)
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
    if out.dim() == target.dim() + 1 and out.shape[0] == target.shape[0] and out.shape[2:] == target.shape[1:]:
        return F.cross_entropy(out, target)  # classes second: (N, C, H, W) against (N, H, W)
    raise ArchsmithError("loss", f"cross_entropy needs logits (..., classes) for targets (...); got output "
                                 f"{tuple(out.shape)} and target {tuple(target.shape)}")


def train(module, settings: dict[str, Any], batches: list, heldout: list, steps: int, kind: str, out: Path, seed: int,
          report: Callable[[int, float], bool]) -> tuple[float, int]:
    """`steps` steps of archsmith's training loop (AdamW, cosine decay, clipping; bf16 on GPUs) over `batches`, one
    per step, into the run directory `out` (metrics.jsonl, loss.png); the held-out loss is evaluated REPORTS times
    and handed to `report(step, loss)`, whose True stops the run there (pruned). Returns (held-out loss, steps run)."""
    import torch

    from archsmith.compress.modules import run
    from archsmith.distill.modules import pack, unpack
    from archsmith.train.loop import TrainConfig, Trainer

    def objective(modules, batch):
        batch = dict(batch)
        target = batch.pop(TARGET)
        value = loss_of(run(modules.model, unpack(batch)), target, kind)
        if not torch.isfinite(value):
            raise Diverged(f"the training loss is {float(value)}")
        return value, {}

    def check(step: int, loss: float) -> bool:
        if not math.isfinite(loss):
            raise Diverged(f"the held-out loss is {loss} at step {step}")
        return report(step, loss)

    samples = [{**pack(x), TARGET: y} for x, y in batches]
    config = TrainConfig(steps=steps, global_batch=1, lr=settings["lr"], weight_decay=settings["weight_decay"],
                         eval_every=max(1, steps // REPORTS), eval_samples=len(heldout), seed=seed, progress=False)
    trainer = Trainer(module, objective, samples, lambda items: items[0], out, config,
                      eval_data=[{**pack(x), TARGET: y} for x, y in heldout],
                      count_tokens=lambda b: int(b[TARGET].shape[0]), on_eval=check)
    summary = trainer.fit()
    return summary["evals"][-1]["loss"], summary["steps"]


def latency_ms(module, inputs) -> float:
    """Median CPU forward time of one batch, in milliseconds (one warm-up run first)."""
    import torch

    from archsmith.compress.modules import run

    module.eval()
    times = []
    with torch.no_grad():
        for i in range(LATENCY_RUNS + 1):
            start = time.perf_counter()
            run(module, inputs)
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


# ---- the study ---------------------------------------------------------------------------------------

def read_batches(data: Callable, steps: int) -> tuple[list, list]:
    """(training batches, held-out batches) from the data function's (inputs, target) pairs: the first HELDOUT are
    held out, then at most `steps` for training (cycled when fewer)."""
    from archsmith.analyze import call
    from archsmith.compress.modules import check_batch

    produced = call(data, "data")
    try:
        pairs = list(itertools.islice(iter(produced), HELDOUT + steps))
    except TypeError:
        raise ArchsmithError("data", f"must return or yield (inputs, target) batches; got {type(produced).__name__}") from None
    batches = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ArchsmithError("data", f"batch {i} is not an (inputs, target) pair")
        inputs, target = pair
        import torch

        if not isinstance(target, torch.Tensor):
            raise ArchsmithError("data", f"batch {i}: the target must be a tensor, got {type(target).__name__}")
        batches.append((check_batch(inputs, "data"), target))
    if len(batches) < HELDOUT + 1:
        raise ArchsmithError("data", f"gave {len(batches)} batches; needs at least {HELDOUT + 1} ({HELDOUT} are held out)")
    return batches[HELDOUT:], batches[:HELDOUT]


def check_args(trials: int, steps: int, loss: str, objective: str, pruner: str, max_params: int | None,
           max_memory: int | None) -> None:
    for name, value, high in (("trials", trials, MAX_TRIALS), ("steps", steps, MAX_STEPS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
            raise ArchsmithError(name, f"must be an integer in [1, {high:,}], got {value!r:.40}")
    for name, value, allowed in (("loss", loss, LOSSES), ("objective", objective, OBJECTIVES), ("pruner", pruner, PRUNERS)):
        if value not in allowed:
            raise ArchsmithError(name, f"must be one of {', '.join(allowed)}; got {str(value)[:40]!r}")
    for name, value in (("max_params", max_params), ("max_memory", max_memory)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ArchsmithError(name, f"must be a positive integer, got {value!r:.40}")


def _pruner(kind: str, steps: int):
    import optuna

    first = max(1, steps // REPORTS)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, max_resource=steps, reduction_factor=3)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_studies(out: Path, config: dict[str, Any], pruner: str, steps: int, seed: int):
    """(the multi-objective study, the learning-curve study), created or resumed from out/study.db. A study started
    with another space, model, data or objective is refused; trials a killed run left running are marked failed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / DATABASE).resolve()}")
    study = optuna.create_study(study_name=STUDY, storage=storage, directions=["minimize", "minimize"], load_if_exists=True)
    curves = optuna.create_study(study_name=CURVES, storage=storage, direction="minimize", pruner=_pruner(pruner, steps),
                                 load_if_exists=True)
    before = study.user_attrs.get("config")
    if before is None:
        study.set_user_attr("config", config)
    elif before != config:
        changed = sorted(k for k in set(before) | set(config) if before.get(k) != config.get(k))
        raise ArchsmithError("out", f"{out} holds a study of another search (it differs in {', '.join(changed)}); "
                                    "give a new --out to start one")
    for s in (study, curves):
        for t in s.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            s.tell(t.number, state=optuna.trial.TrialState.FAIL)
    # TPE (multi-objective: MOTPE), reseeded past the trials a resumed study already has so it draws new points
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    return study, curves


def run_trial(study, curves, space: Space, factory: Callable, batches: list, heldout: list, out: Path, *, steps: int, loss: str,
              objective: str, max_params: int | None, max_memory: int | None, seed: int,
              min_params: int | None = None, score: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """Ask, measure, prune or train, tell. The trial's row (state, values, sizes, settings, why pruned). `score(module)`:
    an accuracy in [0, 1] of the trained model; the first objective is then 1 - score instead of the held-out loss."""
    import optuna

    state = optuna.trial.TrialState
    trial, curve = study.ask(), curves.ask()
    kwargs, settings = space.suggest(trial)
    for key, value in (("model_kwargs", kwargs), ("train", settings)):
        trial.set_user_attr(key, value)

    def finish(how, values=None, why: str | None = None, loss_value: float | None = None) -> dict[str, Any]:
        if why:
            trial.set_user_attr("why", why)
        study.tell(trial, values, state=how)
        curves.tell(curve, loss_value if how == state.COMPLETE else None, state=how)
        return row(study.trials[trial.number])

    try:
        size = measure(factory, kwargs, batches[0][0], seed + trial.number)
    except Exception as exc:  # the factory refuses these arguments, or its model cannot run the batch
        return finish(state.FAIL, why=f"could not build or run it: {type(exc).__name__}: {str(exc)[:200]}")
    for key, value in size.items():
        trial.set_user_attr(key, value)
    for name, value, low, high in (("params", size["params"], min_params, max_params), ("memory", size["memory_bytes"], None, max_memory)):
        if high is not None and value > high:
            return finish(state.PRUNED, why=f"{name} {value:,} over the cap {high:,}: not trained")
        if low is not None and value < low:
            return finish(state.PRUNED, why=f"{name} {value:,} under the floor {low:,}: not trained")
    try:
        module = _build(factory, kwargs, "cpu", seed + trial.number)

        def report(step: int, value: float) -> bool:
            curve.report(value, step)
            return curve.should_prune()

        held, ran = train(module, settings, batches, heldout, steps, loss, out / TRIALS / str(trial.number),
                          seed + trial.number, report)
    except ArchsmithError:
        raise  # the loss cannot read the model's outputs: every trial would fail the same way
    except Diverged as exc:
        return finish(state.FAIL, why=str(exc))
    except Exception as exc:
        return finish(state.FAIL, why=f"training raised {type(exc).__name__}: {str(exc)[:200]}")
    trial.set_user_attr("steps_trained", ran)
    trial.set_user_attr("heldout_loss", held)
    if ran < steps:
        return finish(state.PRUNED, why=f"pruned at step {ran} of {steps}: held-out loss {held:.4g}", loss_value=held)
    size["latency_ms"] = latency_ms(module, heldout[0][0])
    trial.set_user_attr("latency_ms", size["latency_ms"])
    first = held
    if score is not None:
        metric = float(score(module.eval()))
        trial.set_user_attr("task_metric", metric)
        first = 1.0 - metric
    return finish(state.COMPLETE, [first, float(size[size_key(objective)])], loss_value=held)


def accuracy_of(module, heldout: list) -> float:
    """Top-1 accuracy of `module` on the held-out (inputs, class target) batches (classes last, or second as in
    (N, C, H, W) against (N, H, W))."""
    import torch

    from archsmith.compress.modules import outputs, run

    hits = total = 0
    with torch.no_grad():
        for inputs, target in heldout:
            out = outputs(run(module, inputs))[0]
            predicted = out.argmax(-1) if out.shape[:-1] == target.shape else out.argmax(1)
            hits += int((predicted == target).sum())
            total += target.numel()
    return hits / max(total, 1)


def row(t) -> dict[str, Any]:
    """One trial as JSON."""
    a = t.user_attrs
    return {"trial": t.number, "state": t.state.name.lower(), "heldout_loss": a.get("heldout_loss"),
            "task_metric": a.get("task_metric"), "objective_value": t.values[0] if t.values else None,
            "params": a.get("params"), "flops": a.get("flops"), "memory_bytes": a.get("memory_bytes"),
            "latency_ms": a.get("latency_ms"), "steps_trained": a.get("steps_trained", 0),
            "model_kwargs": a.get("model_kwargs"), "train": a.get("train"), "why": a.get("why")}


def search(model: str, space: str | Path | Space, data: str, out: str | Path, *, loss: str = "cross_entropy",
           trials: int = 20, steps: int = 100, objective: str = "params", max_params: int | None = None,
           max_memory: int | None = None, pruner: str = "hyperband", seed: int = 0, overwrite: bool = False,
           allow_code: bool = True, progress: bool = True, metric: str = "loss") -> dict[str, Any]:
    """Run (or resume) the study in `out`; the result: every trial, the Pareto front and the recommendation (the
    front's lowest held-out loss, or error with metric "accuracy"). Writes out/study.db, out/search.json and
    out/pareto.png."""
    from archsmith.analyze import import_callable

    check_args(trials, steps, loss, objective, pruner, max_params, max_memory)
    if metric not in METRICS:
        raise ArchsmithError("metric", f"must be one of {', '.join(METRICS)}; got {str(metric)[:40]!r}")
    if metric == "accuracy" and loss != "cross_entropy":
        raise ArchsmithError("metric", "accuracy needs class targets: --loss cross_entropy")
    parsed = space if isinstance(space, Space) else read_space(space)
    factory = import_callable(model, "model", allow_code)
    batches, heldout = read_batches(import_callable(data, "data", allow_code), steps)
    out = _out_dir(Path(out), overwrite)
    config = {"model": str(model), "data": str(data), "space": parsed.to_dict(), "loss": loss, "objective": objective,
              "steps": steps, "max_params": max_params, "max_memory": max_memory, "pruner": pruner, "metric": metric}
    score = (lambda module: accuracy_of(module, heldout)) if metric == "accuracy" else None
    return run_study(factory, parsed, batches, heldout, out, config, trials=trials, seed=seed, progress=progress, score=score)


def run_study(factory: Callable, space: Space, batches: list, heldout: list, out: Path, config: dict[str, Any], *,
              trials: int, seed: int, progress: bool, score: Callable[[Any], float] | None = None) -> dict[str, Any]:
    """The study loop over `factory` (keyword arguments from `space`); `config` holds loss, objective, steps, caps,
    pruner and metric, and is what a resumed study must match. `score`: see run_trial."""
    from archsmith.progress import Progress

    study, curves = open_studies(out, config, config["pruner"], config["steps"], seed)
    done = len(study.trials)
    with Progress("searching", total=max(trials, done), unit="trials", done=done, enabled=progress) as bar:
        while len(study.trials) < trials:
            last = run_trial(study, curves, space, factory, batches, heldout, out, steps=config["steps"], loss=config["loss"],
                             objective=config["objective"], max_params=config["max_params"],
                             max_memory=config["max_memory"], seed=seed, min_params=config.get("min_params"), score=score)
            shown = f"loss {last['heldout_loss']:.4g}" if last["heldout_loss"] is not None else last["state"]
            shown += f", {config['metric']} {last['task_metric']:.4g}" if last["task_metric"] is not None else ""
            bar.update(len(study.trials), f"trial {last['trial']}: {shown}")
    return _finish(study, out, config)


def _out_dir(out: Path, overwrite: bool) -> Path:
    """The study directory: new, or one holding a study (resumed); another non-empty directory only with overwrite."""
    if out.exists() and not out.is_dir():
        raise ArchsmithError("out", f"{out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / DATABASE).is_file() and not overwrite:
        raise ArchsmithError("out", f"{out} already exists and holds no study ({DATABASE}); pass --overwrite to use it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _finish(study, out: Path, config: dict[str, Any]) -> dict[str, Any]:
    import json

    from archsmith.files import write_file

    rows = [row(t) for t in study.trials]
    front = sorted((row(t) for t in study.best_trials), key=lambda r: r[size_key(config["objective"])])
    recommended = min(front, key=lambda r: r["objective_value"]) if front else None
    counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "fail")}
    result = {"study": str(out / DATABASE), "config": config, "trials": rows, "counts": counts,
              "pruned_by_size": sum(1 for r in rows if r["why"] and "not trained" in r["why"]),
              "pareto_front": front, "recommended": recommended}
    write_file(out / "search.json", json.dumps(result, indent=2) + "\n", overwrite=True, field="out")
    if front:
        write_file(out / "pareto.png", chart(result), overwrite=True, field="out")
        result["chart"] = str(out / "pareto.png")
    return result


def size_key(objective: str) -> str:
    """The trial field an objective ranks by: params, flops or latency_ms."""
    return {"params": "params", "flops": "flops", "latency": "latency_ms"}[objective]


def chart(result: dict[str, Any]) -> bytes:
    """Held-out loss against size: every completed trial, the Pareto front, the recommendation and the caps."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = size_key(result["config"]["objective"])
    done = [r for r in result["trials"] if r["state"] == "complete"]
    front, rec = result["pareto_front"], result["recommended"]
    fig, ax = plt.subplots(figsize=(7, 4))
    y = "objective_value"
    ax.scatter([r[key] for r in done], [r[y] for r in done], s=14, color="0.6", label="trials")
    ax.step([r[key] for r in front], [r[y] for r in front], where="post", color="tab:red")
    ax.scatter([r[key] for r in front], [r[y] for r in front], s=28, color="tab:red", label="Pareto front")
    ax.scatter([rec[key]], [rec[y]], marker="*", s=160, color="tab:blue", label=f"recommended (trial {rec['trial']})")
    if key == "params" and result["config"]["max_params"]:
        ax.axvline(result["config"]["max_params"], ls="--", color="0.3", label="--max-params")
    ax.set_xscale("log")
    ax.set_xlabel({"params": "parameters", "flops": "forward FLOPs per batch", "latency_ms": "CPU ms per batch"}[key])
    metric = result["config"].get("metric", "loss")
    ax.set_ylabel("held-out loss" if metric == "loss" else f"1 - {metric} (held-out)")
    ax.set_title(f"{result['counts']['complete']} trained, {result['pruned_by_size']} over the caps (not trained), "
                 f"{result['counts']['pruned'] - result['pruned_by_size']} stopped early", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return buf.getvalue()
