"""Tensor parallelism (Megatron-style, with sequence parallelism) for `archsmith.network.CausalLM`.

The plan, on the `tp` dimension of the device mesh (`torch.distributed.tensor.parallel`):

- embed_tokens: vocabulary-parallel (rows of the table split), output split along the sequence (Shard(1));
- norms: sequence parallel (each rank normalises its S/tp positions; weights replicated, their gradients summed);
  QK-norm over a head's width likewise, split over the heads;
- attention: input gathered along the sequence, q/k/v column-wise (H/tp query and G/tp KV heads per rank),
  o_proj row-wise with a reduce-scatter back to the sequence split;
- MLP: gate/up column-wise, down row-wise with a reduce-scatter;
- lm_head: column-wise, logits left split along the vocabulary for a vocabulary-parallel cross-entropy
  (`loss_parallel`), so no rank ever holds the whole (B, S, vocab) logits.

Layouts the plan cannot express are refused before anything is built (`check`).
"""

from __future__ import annotations

from typing import Any

from archsmith.errors import ArchsmithError


def check(spec: Any, tp: int) -> None:
    """Refuse, naming the spec's field, what this plan cannot split over `tp` ranks."""
    def need(ok: bool, field: str, why: str) -> None:
        if not ok:
            raise ArchsmithError("tp", f"{tp} cannot split this model: {field} {why}")

    need(spec.num_heads % tp == 0, "num_heads", f"= {spec.num_heads} is not a multiple of {tp}")
    need(spec.num_kv_heads % tp == 0, "num_kv_heads", f"= {spec.num_kv_heads} is not a multiple of {tp}")
    need(spec.ffn_size % tp == 0, "ffn_size", f"= {spec.ffn_size} is not a multiple of {tp}")
    need(spec.vocab_size % tp == 0, "vocab_size", f"= {spec.vocab_size} is not a multiple of {tp} (pad the vocabulary)")
    need(spec.moe is None, "moe", "is set: experts are not split by this plan (train MoE designs with --strategy fsdp)")
    need(spec.mla is None, "mla", "is set: latent attention is not split by this plan")
    need(not spec.fused_qkv and not spec.fused_gate_up, "fused projections", "cannot be split column-wise as one matrix")
    need(spec.qk_norm not in ("full", "per_head"), "qk_norm", f"= {spec.qk_norm!r} has weights across heads, which no rank holds all of")
    need(spec.position == "rope", "position", f"= {spec.position!r}: only RoPE keeps positions out of the "
                                               "sequence-split residual stream")


def parallelize(model: Any, mesh: Any) -> None:
    """Apply the plan in place to `model` (a CausalLM, or a pipeline stage's pruned copy: absent parts skipped)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)

    tp = mesh.size()
    check(model.spec, tp)
    decoder = model.model
    top: dict[str, Any] = {}
    if decoder.embed_tokens is not None:
        top["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1))
    if decoder.norm is not None:
        top["model.norm"] = SequenceParallel(use_local_output=True)
    if model.lm_head is not None:
        top["lm_head"] = ColwiseParallel(input_layouts=Shard(1), output_layouts=Shard(-1), use_local_output=False)
    parallelize_module(model, mesh, top)
    if model.spec.tie_embeddings and decoder.embed_tokens is not None and model.lm_head is not None:
        model.lm_head.weight = decoder.embed_tokens.weight  # both Shard(0) over the vocabulary: one parameter again
    # the sequence-split residual stream gathered whole before attention and the MLP (x is their first argument)
    attn_in = PrepareModuleInput(input_layouts=(Shard(1), None, None, None), desired_input_layouts=(Replicate(), None, None, None),
                                 use_local_output=True)
    mlp_in = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True)
    for layer in decoder.stack():
        plan: dict[str, Any] = {name: SequenceParallel(use_local_output=True) for name, _ in layer.named_children()
                                if name.endswith("layernorm")}
        attn, mlp = layer.self_attn, layer.mlp
        plan["self_attn"] = attn_in
        if attn.qk_norm == "head":  # q, k (B, S, heads/tp, D) here: the norm's weight is shared by every head
            plan.update({f"self_attn.{n}": SequenceParallel(sequence_dim=2, use_local_output=True) for n in ("q_norm", "k_norm")})
        plan.update({f"self_attn.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")})
        plan["self_attn.o_proj"] = RowwiseParallel(output_layouts=Shard(1))
        plan["mlp"] = mlp_in
        plan.update({f"mlp.{p}": ColwiseParallel() for p in ("gate_proj", "up_proj") if hasattr(mlp, p)})
        plan["mlp.down_proj"] = RowwiseParallel(output_layouts=Shard(1))
        parallelize_module(layer, mesh, plan)
        attn.num_heads, attn.num_kv_heads = attn.num_heads // tp, attn.num_kv_heads // tp  # this rank's heads
        attn.q_dim, attn.kv_dim = attn.q_dim // tp, attn.kv_dim // tp
