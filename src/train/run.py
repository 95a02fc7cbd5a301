"""`archsmith train`: a causal LM from a design (config.json) or checkpoint, trained on a corpus.

    archsmith train runs/5m --data corpus/ --out runs/5m-train --steps 200 --batch 16 --seq 256
    archsmith train runs/5m --data corpus/ --out runs/5m-train --nproc 2 --strategy fsdp
    torchrun --standalone --nproc_per_node 8 -m archsmith.train runs/1b --data corpus/ --out runs/1b-train --strategy fsdp

The run directory (RUN) holds `run.json` (the settings; a later `--resume` must match them),
`data/` (the token file), and what the loop writes (`archsmith.train.loop`): metrics.jsonl,
checkpoints/, final/ (config.json + safetensors + tokenizer files: a Hugging Face model
directory), loss.png, summary.json, status.json, and report.md.

With `--nproc N` (outside torchrun) the data is tokenized here first, then torchrun starts N
processes on this machine; each reads the prepared token file. Under torchrun directly, rank 0
tokenizes while the others wait. Several machines need RUN on a shared file system.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

from archsmith.errors import ArchsmithError

RUN_FILE = "run.json"
DATA_DIR = "data"
BOUNDARY_ENV = "ARCHSMITH_BOUNDARY"  # a workspace root: the run reads and writes only below it (set by the MCP server)
LAUNCHED_ENV = "ARCHSMITH_TRAIN_LAUNCHED"  # set by `--nproc` for its torchrun children: the launcher reports
DEFAULT_SAVE_EVERY = 1000  # steps between checkpoints: minutes of GPU work at risk, little time spent writing
CONTINUE_LR = 3e-4  # default peak LR when continuing from weights (a fresh model gets the design recipe's fit: default_lr)
# Settings a resumed run must share with the run it continues (the data order and LR schedule depend on them).
RESUME_FIXED = ("model", "data", "tokenizer", "batch", "seq", "lr", "min_lr_ratio", "schedule", "warmup", "weight_decay",
                "seed", "eval_fraction", "document_mask", "field")


@dataclass
class RunArgs:
    """The settings of `archsmith train` (one field per CLI option)."""

    model: str  # a config.json, or a directory with one (and optionally weights to continue from)
    data: list[str]
    out: str
    tokenizer: str | None = None  # default: the model directory's tokenizer files
    steps: int = 1000
    batch: int = 32  # global batch in sequences
    micro_batch: int | None = None
    seq: int | None = None  # default: the model's context length
    lr: float | None = None  # default: `default_lr` (the design recipe's rule for fresh weights)
    min_lr_ratio: float = 0.1
    schedule: str = "cosine"
    warmup: int | None = None  # default: 5% of steps, at most 2000 (scaling.warmup_steps, as the design recipe)
    weight_decay: float = 0.1
    clip: float = 1.0
    precision: str = "auto"
    save_every: int = DEFAULT_SAVE_EVERY
    keep: int = 3
    eval_every: int | None = None  # default: save_every
    eval_samples: int = 256
    eval_fraction: float = 0.05  # every 20th window held out
    patience: int | None = None
    document_mask: bool = False
    field: str = "text"
    resume: bool = False
    seed: int = 0
    nproc: int = 1
    strategy: str = "ddp"
    tp: int = 1  # tensor-parallel degree
    pp: int = 1  # pipeline-parallel degree
    cp: int = 1  # context-parallel degree
    pp_schedule: str = "1f1b"
    compile: bool = False
    checkpointing: bool = False
    deterministic: bool = False
    eval_tasks: str | None = None  # lm-evaluation-harness tasks (comma list) run at every evaluation
    eval_include: str | None = None  # a directory of local task YAMLs for eval_tasks
    eval_limit: int | None = None  # examples per task at each evaluation
    tensorboard: bool = False  # metrics also as TensorBoard event files in RUN/tensorboard
    progress: bool = True

    def resolved(self) -> "RunArgs":
        """Defaults that depend on other fields, filled in (a resumed run keeps the warmup and learning rate it
        started with)."""
        from archsmith.scaling import warmup_steps

        saved = _saved(Path(self.out))
        warmup, lr = self.warmup, self.lr
        if self.resume and saved is not None:
            warmup = saved["settings"]["warmup"] if warmup is None else warmup
            lr = saved["settings"]["lr"] if lr is None else lr
        if warmup is None:
            warmup = warmup_steps(self.steps)
        if lr is None:
            lr = default_lr(self)
        eval_every = self.eval_every if self.eval_every is not None else self.save_every
        return dataclasses.replace(self, warmup=warmup, lr=lr, eval_every=eval_every)

    def argv(self) -> list[str]:
        """CLI arguments that reproduce these settings (without --nproc), for torchrun and background runs."""
        args = [self.model]
        for path in self.data:
            args += ["--data", path]
        args += ["--out", self.out]
        defaults = RunArgs(model="", data=[], out="")
        for f in dataclasses.fields(self):
            name, value = f.name, getattr(self, f.name)
            if name in ("model", "data", "out", "nproc", "progress") or value == getattr(defaults, name):
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag)  # only True differs from the (False) defaults
            else:
                args += [flag, str(value)]
        if not self.progress:
            args.append("--no-progress")
        return args


def default_lr(args: RunArgs) -> float:
    """The peak learning rate when --lr is not given: for fresh weights (a design directory or a config.json), the
    rule of `design`'s training recipe, DeepSeek LLM's fit for the run's compute (`scaling.default_lr`: non-embedding
    FLOPs per token x steps x batch x seq); CONTINUE_LR when the model directory holds weights to continue from, or
    when the model cannot be read (`check` then says why)."""
    from archsmith.hfconfig import load_spec
    from archsmith.scaling import default_lr as fitted_lr

    source = Path(args.model)
    try:
        if source.is_dir() and any(source.glob("*.safetensors")):
            return CONTINUE_LR
        spec = load_spec(source / "config.json" if source.is_dir() else source)
        return fitted_lr(spec, args.seq or spec.context_length, args.steps, args.batch)
    except (ArchsmithError, OSError, ValueError):
        return CONTINUE_LR


@dataclass
class Plan:
    """What `check` found: the model source, its spec, the tokenizer and the corpus files."""

    args: RunArgs
    config_path: Path
    weights: bool  # the model directory has weights to continue from
    spec: Any  # ArchitectureSpec with the tokenizer's special-token ids
    tokenizer: Any  # TokenizerInfo
    files: list[Path]
    seq: int


def check(args: RunArgs) -> Plan:
    """Validate everything before any work; raises ArchsmithError naming the field. Writes nothing."""
    from archsmith.files import kind
    from archsmith.hfconfig import load_spec
    from archsmith.tokenizer import read_tokenizer
    from archsmith.train.data import corpus_files

    if args.nproc < 1 or args.nproc > 4096:
        raise ArchsmithError("nproc", f"must be in [1, 4096], got {args.nproc}")
    if not 0 <= args.eval_fraction < 1:
        raise ArchsmithError("eval_fraction", f"must be in [0, 1), got {args.eval_fraction}")
    source = Path(args.model)
    what = kind(source, "model")
    config_path = source if what == "file" else source / "config.json"
    if kind(config_path, "model") != "file":
        raise ArchsmithError("model", f"{source} is neither a config.json nor a directory holding one")
    spec = load_spec(config_path)
    weights = what == "dir" and any(source.glob("*.safetensors"))
    for file in sorted(source.glob("*.safetensors")) if weights else []:
        _check_safetensors(file)
    tok_dir = Path(args.tokenizer) if args.tokenizer else (source if source.is_dir() else source.parent)
    if kind(tok_dir / "tokenizer.json", "tokenizer") != "file" and not args.tokenizer:
        raise ArchsmithError("tokenizer", f"{tok_dir} has no tokenizer.json; pass --tokenizer DIR "
                                          "(train one with `archsmith tokenizer train`)")
    tok = read_tokenizer(tok_dir)
    if tok.vocab_size > spec.vocab_size:
        raise ArchsmithError("vocab_size", f"{config_path} has vocab_size {spec.vocab_size:,} but the tokenizer in {tok_dir} has "
                                           f"{tok.vocab_size:,} tokens; design with --tokenizer {tok_dir} (or raise vocab_size)")
    spec = spec.replace(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    seq = args.seq or spec.context_length
    if not 2 <= seq <= spec.context_length:
        raise ArchsmithError("seq", f"must be in [2, context_length={spec.context_length}] of {config_path}, got {seq}")
    if not args.resume and args.warmup is not None and args.warmup >= args.steps > 1:
        raise ArchsmithError("warmup", f"must be shorter than the run (steps={args.steps}), got {args.warmup}")
    world = args.nproc if args.nproc > 1 else int(os.environ.get("WORLD_SIZE", "1"))
    config = train_config(args)
    config.check(world)
    layout = config.layout()
    if not layout.plain:
        import torch

        from archsmith.train.parallel.layout import check_model

        check_model(layout, spec, "cuda" if torch.cuda.is_available() else "cpu", args.document_mask)
    files = corpus_files(args.data, "data")
    _check_tasks(args, world)
    _check_out(args)
    return Plan(args, config_path, weights, spec, tok, files, seq)


def _check_tasks(args: RunArgs, world: int) -> None:
    """--eval-tasks: named tasks that exist (in --eval-include or the harness's registry), one process or DDP."""
    if args.eval_tasks is None:
        for name in ("eval_include", "eval_limit"):
            if getattr(args, name) is not None:
                raise ArchsmithError(name, "goes with --eval-tasks")
        return
    if train_config(args).sharded(world):
        raise ArchsmithError("eval_tasks", "run with one process or --strategy ddp (an FSDP model, or a tp/pp/cp layout, is "
                                           "sharded across processes)")
    if args.eval_limit is not None and args.eval_limit < 1:
        raise ArchsmithError("eval_limit", f"must be at least 1 example per task; got {args.eval_limit}")
    from archsmith.quality import check_measure

    check_measure(_task_names(args), [args.eval_include] if args.eval_include else [])


def _task_names(args: RunArgs) -> list[str]:
    from archsmith.quality import task_list

    names = task_list(args.eval_tasks)
    if not names:
        raise ArchsmithError("eval_tasks", "name at least one lm-evaluation-harness task")
    return names


def task_columns(evals: list[dict[str, Any]]) -> list[str]:
    """The --eval-tasks metrics of a run's evaluations (`task/metric`, without their stderr), as the last one has them."""
    return [k for k in (evals or [{}])[-1] if "/" in k and not k.endswith("_stderr")]


def _task_eval(args: RunArgs, model, tokenizer_dir: str, device) -> Callable[[int], dict[str, float]]:
    """The Trainer's eval_extra: the harness's tasks on the model being trained, as {"task/metric": value}."""
    from transformers import AutoTokenizer

    from archsmith.quality import harness
    from archsmith.quality.language import HarnessLM, network_lm

    lm = HarnessLM(network_lm(model, AutoTokenizer.from_pretrained(tokenizer_dir), str(device)))
    include = [Path(args.eval_include)] if args.eval_include else []

    def measure(step: int) -> dict[str, float]:
        results = harness.run(lm, _task_names(args), include, limit=args.eval_limit, seed=args.seed)["results"]
        return {f"{task}/{metric}": value for task, metrics in results.items() for metric, value in metrics.items()
                if value is not None and metric != "samples"}

    return measure


def _check_safetensors(path: Path) -> None:
    """Refuse, naming the file, weights whose safetensors header cannot be read (torn, or not safetensors at all)."""
    from safetensors import SafetensorError, safe_open

    from archsmith.files import kind

    if kind(path, "model") != "file":
        raise ArchsmithError("model", f"{path} is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ArchsmithError("model", f"{path} is not a readable safetensors file ({reason})") from None


def train_config(args: RunArgs):
    """The loop's TrainConfig for these (resolved) settings."""
    from archsmith.train.loop import TrainConfig

    return TrainConfig(
        steps=args.steps, global_batch=args.batch, micro_batch=args.micro_batch, lr=args.lr, min_lr_ratio=args.min_lr_ratio,
        schedule=args.schedule, warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, precision=args.precision,
        strategy=args.strategy, tp=args.tp, pp=args.pp, cp=args.cp, pp_schedule=args.pp_schedule, save_every=args.save_every, keep=args.keep, eval_every=args.eval_every,
        eval_samples=args.eval_samples, patience=args.patience, checkpointing=args.checkpointing, compile=args.compile,
        seed=args.seed, deterministic=args.deterministic, progress=args.progress)


def _settings(args: RunArgs) -> dict[str, Any]:
    """The settings a resume must repeat; paths absolute, so a run started by the CLI resumes from the MCP tool."""
    settings = {k: getattr(args, k) for k in RESUME_FIXED}
    settings.update(model=str(Path(args.model).resolve()), data=[str(Path(p).resolve()) for p in args.data],
                    tokenizer=str(Path(args.tokenizer).resolve()) if args.tokenizer else None)
    return settings


def _saved(out: Path) -> dict[str, Any] | None:
    """RUN/run.json read through the workspace boundary; None when there is none."""
    from archsmith.files import kind, read_text

    if kind(out / RUN_FILE, "out") != "file":
        return None
    try:
        return json.loads(read_text(out / RUN_FILE, "out"))
    except ValueError:
        raise ArchsmithError("out", f"{out / RUN_FILE} is not the JSON archsmith writes; choose a new directory") from None


def _check_out(args: RunArgs) -> None:
    """A new or empty --out; a run that stopped before its first checkpoint (started again, with any settings); or,
    with --resume, a run that has a checkpoint."""
    from archsmith.files import HeldDir, kind
    from archsmith.train.checkpoint import CHECKPOINTS, latest

    out = Path(args.out)
    what = kind(out, "out")
    if what not in (None, "dir"):
        raise ArchsmithError("out", f"{out} exists and is not a directory")
    entries, checkpoint = {}, None
    if what == "dir":
        with HeldDir(out, "out", create=False) as run:
            entries, checkpoint = dict(run.listdir()), latest(run)
    saved = (_saved(out) or {}).get("settings")
    if args.resume:
        if saved is None or checkpoint is None:
            raise ArchsmithError("resume", f"no complete checkpoint in {out / CHECKPOINTS}; start without --resume")
    elif entries:
        if saved is None:
            raise ArchsmithError("out", f"{out} exists and holds files that are not an archsmith run; choose a new directory")
        if checkpoint is not None:
            raise ArchsmithError("out", f"{out} holds another run; pass --resume to continue it or choose a new directory")
        return  # no checkpoint: nothing to lose, the run starts again with these settings
    if saved is not None:
        for key, value in _settings(args).items():
            if saved.get(key) != value:
                raise ArchsmithError(key, f"{out} was started with {key}={saved.get(key)!r}; "
                                          f"{'resume' if args.resume else 'run'} with the same value (got {value!r})")


def record(plan: Plan) -> None:
    """Write RUN/run.json (the settings a resume must match); a resumed run keeps the one it started with."""
    from archsmith.files import write_file

    out = Path(plan.args.out)
    if not plan.args.resume or _saved(out) is None:
        saved = {"settings": _settings(plan.args), "args": dataclasses.asdict(plan.args)}
        write_file(out / RUN_FILE, json.dumps(saved, indent=2) + "\n", overwrite=True, field="out")


def prepare(plan: Plan, hold: bool = False) -> Any:
    """run.json, then the corpus tokenized into RUN/data (reused when unchanged); returns the TokenFile, or with
    `hold` (TokenFile, the held run directory) for a training process that holds it for the whole run."""
    from archsmith.files import HeldDir, kind
    from archsmith.train.data import tokenize

    out = Path(plan.args.out)
    created = kind(out, "out") is None
    run = None
    try:
        record(plan)
        run = HeldDir(out, "out")
        with run.sub(DATA_DIR) as data:
            tokens = tokenize(plan.files, Path(plan.tokenizer.path) / "tokenizer.json", data, plan.tokenizer.eos_token_id,
                              plan.args.field, progress=plan.args.progress, reuse_only=plan.args.resume)
        if hold:
            return tokens, run
        run.close()
        return tokens
    except BaseException:
        if run is not None:
            run.close()
        if created:  # bad data (no text, not UTF-8), a stop before the first step: leave nothing behind
            _remove_new(out)
        raise


def _remove_new(out: Path) -> None:
    """Remove the run directory this call created, through the boundary (a symlink put there is only unlinked)."""
    from archsmith.files import _located, remove_entry

    try:
        with _located(out, "out") as (parent, name, _):
            remove_entry(parent, name)
    except (FileNotFoundError, ArchsmithError):
        pass


def causal_lm_objective(modules, batch: dict[str, Any]):
    """Next-token cross-entropy of `modules.model` on a packed batch; `nll` excludes a MoE router loss."""
    out = modules.model(batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"],
                        position_ids=batch.get("position_ids"))
    nll = out.loss.detach()
    if out.aux_loss is not None:
        nll = nll - float(modules.model.spec.extra.get("router_aux_loss_coef", 0.01)) * out.aux_loss.detach()
    return out.loss, {"nll": nll}


def _save_with_tokenizer(tokenizer_dir: str, model, state_dict, directory: Path) -> None:
    """Save hook: the model, then the tokenizer files beside it (a complete Hugging Face model directory)."""
    from archsmith.files import write_files
    from archsmith.tokenizer import tokenizer_files
    from archsmith.train.checkpoint import save_model

    save_model(model, state_dict, directory)
    write_files(directory, tokenizer_files(tokenizer_dir), overwrite=True)


def train(args: RunArgs) -> dict[str, Any]:
    """Run (this process's part of) the training; returns the summary on rank 0, {} elsewhere."""
    import torch

    from archsmith.files import HeldDir
    from archsmith.network import CausalLM
    from archsmith.train import memory, parallel
    from archsmith.train.data import TokenFile, lm_batch, split_windows
    from archsmith.train.loop import Trainer

    args = args.resolved()
    d = parallel.setup()
    run = None
    try:
        if d.main:
            plan = check(args)
            planned = check_memory(plan, d.world, memory.free_bytes(d.device))  # before anything is allocated
            _, run = prepare(plan, hold=True)
        parallel.barrier(d)
        if not d.main:
            plan = check(args)
            planned = check_memory(plan, d.world, memory.free_bytes(d.device))
            run = HeldDir(args.out, "out", create=False)
        with run.sub(DATA_DIR, create=False) as data:
            tokens = TokenFile.read(data)
        train_windows, eval_windows = split_windows(tokens.array(), plan.seq, args.eval_fraction)
        if plan.weights:
            model = CausalLM.from_pretrained(Path(args.model), dtype=torch.float32)
            model.spec = plan.spec
        else:
            model = CausalLM.from_spec(plan.spec, seed=args.seed)
        pad = plan.tokenizer.pad_token_id if plan.tokenizer.pad_token_id is not None else tokens.eos_id
        trainer = Trainer(model, causal_lm_objective, train_windows, partial(lm_batch, pad_id=pad, eos_id=tokens.eos_id,
                                                                              document_mask=args.document_mask),
                          run, train_config(args), eval_data=eval_windows, save_model=partial(_save_with_tokenizer, plan.tokenizer.path),
                          eval_extra=_task_eval(args, model, plan.tokenizer.path, d.device) if args.eval_tasks else None,
                          loggers=partial(_loggers, args, run))
        summary = trainer.fit(resume=args.resume)
        if d.main:
            summary = {**summary, **_describe(plan, tokens, len(train_windows), len(eval_windows) if eval_windows else 0, model),
                       "plan": planned}
            _write_report(run, args, summary)
        return summary
    finally:
        if run is not None:
            run.close()
        parallel.teardown(d)


def _loggers(args: RunArgs, run, start: int) -> list:
    """The run's experiment loggers besides metrics.jsonl: TensorBoard event files with --tensorboard."""
    from archsmith.train.metrics import TensorBoardLog

    return [TensorBoardLog(run, purge_step=start)] if args.tensorboard else []


def planned_peak(plan: Plan, world: int, micro_batch: int | None = None, checkpointing: bool | None = None,
                 cuda: bool = True) -> dict[str, Any]:
    """`archsmith.peak.training_peak` of this run's step on one device: bf16 (or fp16) autocast, or fp32 as --precision
    says (auto: autocast on a GPU, fp32 elsewhere)."""
    from archsmith.peak import training_peak

    args = plan.args
    micro = micro_batch or args.micro_batch or max(1, args.batch // world)
    fp32 = args.precision == "fp32" or (args.precision == "auto" and not cuda)
    dtype = "fp32" if fp32 else "fp16" if args.precision == "fp16" else "bf16"
    return training_peak(plan.spec, micro, plan.seq, dtype, args.checkpointing if checkpointing is None else checkpointing, args.compile)


def check_memory(plan: Plan, world: int, free: int | None) -> dict[str, Any]:
    """The plan's peak; a one-line error naming a micro-batch that fits when its reserved bytes exceed `free` (the
    device's free memory; None off CUDA: nothing to check). FSDP or a tp/pp/cp layout shards the state: not checked
    here (the capacity plan's layouts size them)."""
    from archsmith.train.memory import refuse_unless_fits

    planned = planned_peak(plan, world, cuda=free is not None)
    args = plan.args
    if free is None or train_config(args).sharded(world):
        return planned
    per_process = max(1, args.batch // world)
    divisors = [m for m in range(1, per_process + 1) if per_process % m == 0]
    micro = args.micro_batch or per_process
    refuse_unless_fits(planned, free, micro, plan.seq, divisors, lambda m, c: planned_peak(plan, world, m, c), args.checkpointing)
    return planned


def _describe(plan: Plan, tokens, train_windows: int, eval_windows: int, model) -> dict[str, Any]:
    spec = plan.spec
    return {
        "run": plan.args.out,
        "model": {"source": str(plan.config_path), "init": "weights" if plan.weights else f"fresh (seed {plan.args.seed})",
                  "parameters": model.num_parameters(), "shape": f"{spec.hidden_size} x {spec.num_layers}",
                  "vocab_size": spec.vocab_size, "context_length": spec.context_length},
        "tokenizer": {"path": plan.tokenizer.path, "vocab_size": plan.tokenizer.vocab_size, "eos_token_id": plan.tokenizer.eos_token_id},
        "data": {"files": len(plan.files), "documents": tokens.documents, "tokens": tokens.tokens, "seq": plan.seq,
                 "train_windows": train_windows, "eval_windows": eval_windows, "document_mask": plan.args.document_mask},
        "settings": {"batch": plan.args.batch, "lr": plan.args.lr, "schedule": plan.args.schedule, "warmup": plan.args.warmup,
                     "steps": plan.args.steps, "seed": plan.args.seed},
    }


def resume_command(args: RunArgs, steps: str | None = None) -> str:
    """The shell command that continues this run; `steps`: a new --steps value in its place (e.g. "N")."""
    import shlex

    argv = [a for a in args.argv() if a != "--resume"]
    if steps is not None and "--steps" in argv:
        at = argv.index("--steps")
        del argv[at:at + 2]
    argv += ["--nproc", str(args.nproc)] if args.nproc > 1 else []
    argv += ["--resume"] + (["--steps", steps] if steps is not None else [])
    return shlex.join(["archsmith", "train", *argv])


def _write_report(run: Any, args: RunArgs, summary: dict[str, Any]) -> None:
    """report.md and the full summary.json (the loop's plus the model, tokenizer and data), into the held run."""
    from archsmith.report import render_template

    text = render_template("train_report.md.j2", {"s": summary, "tasks": task_columns(summary["evals"]),
                                                  "resume": resume_command(args, steps="N")})
    run.write("report.md", text)
    run.write("summary.json", json.dumps(summary, indent=2) + "\n")


def launch(args: RunArgs) -> dict[str, Any]:
    """`--nproc N` outside torchrun: check and tokenize here, then torchrun N processes on this machine."""
    plan = check(args.resolved())
    prepare(plan)
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))  # cores shared by the processes
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: gloo talks over loopback only
    command = [sys.executable, "-I", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
               "-m", "archsmith.train", *args.argv()]
    proc = subprocess.Popen(command, env=env, stdout=2)  # the ranks print to stderr (fd 2): stdout carries --json
    # SIGTERM here reaches torchrun, which passes it to the ranks: they finish the step, save and exit
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        code = proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:
        raise ArchsmithError("train", f"torchrun exited with code {code} (the ranks' errors are above; "
                                      f"--resume continues from the last checkpoint in {args.out})")
    from archsmith.files import read_text

    return json.loads(read_text(Path(args.out) / "summary.json", "out"))
