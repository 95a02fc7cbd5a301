"""The decoder LM built from an `ArchitectureSpec` (nn.Module with HF state-dict names).

Placeholder: the model, its components and HF weight interop arrive with issue #3
("network.py: the decoder LM and its component library"). Until then, use
`transformers.AutoModelForCausalLM.from_config` on the `config.json` that `archsmith design`
writes: it builds exactly the model the reports describe.
"""
