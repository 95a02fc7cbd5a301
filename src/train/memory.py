"""The memory a training step takes, as the device counts it: the plan's peak against free memory before a run,
the caching allocator's peaks during it, and on CPU the profiler's count of one step (what the tests and the
benchmark hold `archsmith.peak` to).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from archsmith.errors import ArchsmithError


def device_peaks(device: torch.device) -> dict[str, int] | None:
    """{peak_allocated_bytes, peak_reserved_bytes} of a CUDA device since the last call (then reset); None elsewhere."""
    if device.type != "cuda":
        return None
    peaks = {"peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
             "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device))}
    torch.cuda.reset_peak_memory_stats(device)
    return peaks


def free_bytes(device: torch.device) -> int | None:
    """Bytes the device can still give this process (CUDA: free memory plus what torch holds unused); None off CUDA."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def refuse_unless_fits(plan: dict[str, Any], free: int, micro_batch: int, seq: int, smaller: list[int],
                       plan_for: Callable[[int, bool], dict[str, Any]], checkpointing: bool) -> None:
    """Raise a one-line ArchsmithError when the plan's reserved bytes exceed `free`, naming the largest of the `smaller`
    micro-batches that fits (or --checkpointing when none fits without it). `plan_for(micro, checkpointing)` is the
    plan (`archsmith.peak.training_peak`) for another micro-batch."""
    if plan["reserved_bytes"] <= free:
        return
    from archsmith.units import human_bytes

    need = (f"micro-batch {micro_batch} x {seq} tokens needs {human_bytes(plan['peak_bytes'])} at its peak "
            f"(+{plan['headroom']:.0%} allocator headroom) and the device has {human_bytes(free)} free")
    fitting = next((m for m in sorted(smaller, reverse=True) if m < micro_batch and plan_for(m, checkpointing)["reserved_bytes"] <= free), None)
    if fitting is not None:
        raise ArchsmithError("micro_batch", f"{need}; --micro-batch {fitting} fits")
    if not checkpointing and plan_for(micro_batch, True)["reserved_bytes"] <= free:
        raise ArchsmithError("micro_batch", f"{need}; --checkpointing fits")
    raise ArchsmithError("micro_batch", f"{need}; no smaller micro-batch fits one device (shorten --seq, or shard with "
                                        "--nproc N --strategy fsdp)")


def resident_bytes(*groups: Any) -> int:
    """Bytes of the distinct storages of the tensors in `groups` (iterables of tensors, or of dicts of them)."""
    seen: dict[int, int] = {}
    for group in groups:
        for item in group:
            for t in (item.values() if isinstance(item, dict) else [item]):
                if torch.is_tensor(t) and t.device.type != "meta":
                    storage = t.untyped_storage()
                    seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def profiled_peak(fn: Callable[[], Any]) -> int:
    """The most bytes `fn` holds above what was allocated before it (CPU allocations, from torch.profiler's memory events)."""
    from torch.profiler import ProfilerActivity, profile

    from archsmith.analyze import silent_stderr

    with silent_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def measured_step(trainer: Any, steps: int = 2) -> dict[str, int]:
    """Peak bytes of training steps of a prepared `Trainer` on its device.

    CPU: the weights, optimizer state and buffers plus the most the last step allocates (torch.profiler), the first
    steps (which create the optimizer state) unmeasured. CUDA: `torch.cuda.max_memory_allocated` / `_reserved` over all
    `steps` steps, the first included, as the allocator counts a run."""
    from archsmith.train.loop import _State

    state, device = _State(), trainer.d.device
    trainer._clock = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        rows = [trainer._step(state) for _ in range(steps)]  # each row has its step's peaks (`device_peaks`)
        return {"peak_bytes": max(r["peak_allocated_bytes"] for r in rows), "reserved_bytes": max(r["peak_reserved_bytes"] for r in rows)}
    if device.type != "cpu":
        raise ArchsmithError("device", f"measured_step measures CPU and CUDA steps; got {device}")
    for _ in range(steps - 1):
        trainer._step(state)
    resident = resident_bytes(trainer.modules.parameters(), trainer.modules.buffers(), trainer.optimizer.state.values())
    above = profiled_peak(lambda: trainer._step(state))
    return {"peak_bytes": resident + above, "resident_bytes": resident}
