"""The five proofs of a network change, for one spec: copy this file into the workspace, set SPEC to a small
spec with the changed switches on, and run it with `archsmith-python proof.py`. Each line prints a measured
figure and fails loudly when the check does not hold."""

import torch
from transformers import AutoModelForCausalLM

from archsmith import families
from archsmith.estimate import count_params
from archsmith.network import CausalLM
from archsmith.spec import ArchitectureSpec

TOL = 1e-5  # float32 on CPU: equivalent computations through different kernels agree to about this
SPEC = ArchitectureSpec(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, ffn_size=96, vocab_size=128)
PARITY_FAMILIES = families.with_parity("both")  # the families archsmith.weights saves for transformers


def check(name: str, value: float) -> None:
    print(f"{name}: {value:.3g} (tolerance {TOL:g})")
    assert value <= TOL, f"{name} is {value:.3g}, above {TOL:g}"


model = CausalLM.from_spec(SPEC, seed=0).eval()
ids = torch.randint(0, SPEC.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))

# 1. The module has exactly the closed-form parameter count.
built, closed_form = model.num_parameters(), count_params(SPEC)["total"]
print(f"parameters: built {built:,}, estimate {closed_form:,}")
assert built == closed_form

# 2. Causality: changing token 10 leaves the logits of positions 0-9 unchanged.
changed = ids.clone()
changed[:, 10] = (changed[:, 10] + 1) % SPEC.vocab_size
with torch.no_grad():
    full = model(ids).logits
    check("causality, max |logit diff| before the changed token", (full[:, :10] - model(changed).logits[:, :10]).abs().max().item())

# 3. KV-cache decoding equals the full forward: a prefill of 8 tokens, then one token at a time.
cache = model.new_cache(batch=2, max_len=16)
with torch.no_grad():
    parts = [model(ids[:, :8], cache=cache).logits] + [model(ids[:, i:i + 1], cache=cache).logits for i in range(8, 16)]
check("KV cache vs full forward, max |logit diff|", (torch.cat(parts, dim=1) - full).abs().max().item())


# 4. Checkpointed gradients equal plain ones.
def grads(checkpointing: bool) -> dict:
    fresh = CausalLM.from_spec(SPEC, seed=0)
    fresh.set_checkpointing(checkpointing)
    fresh(ids, labels=ids).loss.backward()
    return {name: p.grad for name, p in fresh.named_parameters()}


plain, checkpointed = grads(False), grads(True)
check("checkpointing, max |grad diff|", max((plain[n] - checkpointed[n]).abs().max().item() for n in plain))

# 5. Parity with transformers: the saved checkpoint loads there as the same model.
if SPEC.model_type in PARITY_FAMILIES:
    model.save_pretrained("proof-model", overwrite=True)
    hf = AutoModelForCausalLM.from_pretrained("proof-model").eval()
    with torch.no_grad():
        check("transformers parity, max |logit diff|", (hf(ids).logits - full).abs().max().item())
else:
    print(f"transformers parity: not checked ({SPEC.model_type} is not loadable by archsmith.weights)")
