"""Hugging Face `config.json` <-> `ArchitectureSpec`, driven by the rows of `archsmith.families`.

Reading maps each config key to its spec field through the family's row (renames, transformers'
defaults, layout switches, layer patterns, MoE placement); writing is the inverse, and refuses a
spec the family cannot express, naming the field. Reading accepts both the transformers 4.x rope
keys (`rope_theta`, `rope_scaling`) and the 5.x `rope_parameters`; writing emits the 5.x form.
A multimodal config whose `text_config` holds a supported model_type is read as its language model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from archsmith import families
from archsmith.errors import ConfigError, SpecError
from archsmith.families import ANY, KEYS, MISSING, Family, LayerRule, Same, Switch, Times
from archsmith.spec import ArchitectureSpec, LinearAttentionSpec, MLASpec, MoESpec

SUPPORTED = families.NAMES
SUBSPECS = {"moe": MoESpec, "mla": MLASpec, "linear_attention": LinearAttentionSpec}
# JSON types of the spec fields read from config keys (None is always allowed: the default applies).
INT_FIELDS = {"hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "ffn_size", "vocab_size", "context_length",
              "attention_chunk_size", "sliding_window", "bos_token_id", "pad_token_id"} | {
    f"{name}.{f.name}" for name, kind in SUBSPECS.items() for f in dataclasses.fields(kind) if f.type in ("int", "int | None")}
NUMBER_FIELDS = {"norm_eps", "initializer_range"}
BOOL_FIELDS = {"tie_embeddings", "qkv_bias", "o_bias", "mlp_bias"}
STRING_FIELDS = {"activation"}
# Spec fields read by the rules below rather than through a key.
RULE_FIELDS = {"rope_theta", "rope_scaling", "partial_rotary_factor", "sliding_window", "layer_types", "nope_layers", "moe",
               "mla", "linear_attention", "extra", "model_type", "head_dim", "moe.layers"}


def _family(model_type: Any) -> Family:
    if model_type not in families.FAMILIES:
        raise ConfigError("model_type", f"unsupported model_type {model_type!r:.60}; supported: {', '.join(SUPPORTED)}")
    return families.FAMILIES[model_type]


# ---- reading ----------------------------------------------------------------------------------

def spec_from_hf(cfg: dict[str, Any]) -> ArchitectureSpec:
    """Read a parsed HF config dict. Raises ConfigError / SpecError naming the bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config.json", f"must be a JSON object, got {type(cfg).__name__}")
    cfg = _language_model(cfg)
    fam = _family(read_as(cfg)[0])
    cfg = {**{new: cfg[old] for old, new in fam.aliases.items() if old in cfg and new not in cfg}, **cfg}
    _check_rope_types(cfg)
    values: dict[str, Any] = dict(fam.fixed)
    for field, key in {**KEYS, **fam.keys}.items():
        if key is not None and field not in fam.fixed:
            value = _read(cfg, fam, key, field)
            if value is not MISSING:
                values[field] = value
    for switch in fam.switches:
        values.update(_switch_read(cfg, fam, switch))
    for field, value in list(values.items()):
        if isinstance(value, Same):
            values[field] = values[value.field]
        elif isinstance(value, Times):
            values[field] = value.factor * values[value.field]
    values["extra"] = {key: cfg[key] for key in fam.extra if key in cfg}
    families.check_extra(fam, values["extra"], prefix="")
    if values.get("position", "rope") == "rope":
        values.update(_rope_read(cfg, fam, values["extra"]))
    if "mla.qk_rope_head_dim" in values:  # MLA: the query/key head is the no-rope part plus the rope part
        values["head_dim"] = values["mla.qk_nope_head_dim"] + values["mla.qk_rope_head_dim"]
    layers = values["num_layers"]
    if fam.nope:
        values["nope_layers"] = _nope_read(cfg, layers)
    values["sliding_window"], values["layer_types"] = _layers_read(cfg, fam, values)
    if fam.is_moe:
        values["moe.layers"] = _moe_layers_read(cfg, fam, layers)
    return _build(values, fam.model_type)


def read_as(cfg: dict[str, Any]) -> tuple[Any, str | None]:
    """(the model_type whose layout `cfg` is read with, a note when that is not the config's own model_type).

    A model_type we do not know whose `architectures` names exactly one family's transformers class is that family's
    layout under another name (Kimi-K2's "kimi_k2" is DeepseekV3ForCausalLM); its fields are then read and checked
    as that family's. Anything else is the config's own model_type (refused by `_family` when unknown)."""
    model_type = cfg.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise ConfigError("model_type", f"must be a string, got {type(model_type).__name__}")
    classes = cfg.get("architectures")
    if model_type in families.FAMILIES or not isinstance(classes, list):
        return model_type, None
    found = [f.model_type for f in families.FAMILIES.values() if f.architecture in classes]
    if len(found) != 1:
        return model_type, None
    return found[0], (f"model_type {model_type!r:.40} is read as {found[0]}: its architectures name "
                      f"{families.FAMILIES[found[0]].architecture}, and every field read is that layout's")


def _language_model(cfg: dict[str, Any]) -> dict[str, Any]:
    """The text model of a multimodal wrapper (its `text_config`), else cfg itself."""
    inner = cfg.get("text_config")
    if read_as(cfg)[0] not in families.FAMILIES and isinstance(inner, dict) and read_as(inner)[0] in families.FAMILIES:
        return inner
    return cfg


def read_note(cfg: Any) -> str | None:
    """How `spec_from_hf` reads `cfg` when not by its own model_type (`read_as`), else None."""
    return read_as(_language_model(cfg))[1] if isinstance(cfg, dict) else None


def _read(cfg: dict[str, Any], fam: Family, key: str, field: str) -> Any:
    """The config's value for `key` (transformers' default when absent; a derived default also replaces null)."""
    default = fam.default(key)
    value = cfg.get(key, default)
    if value is None:
        value = families.NULL_MEANS.get(key, default if isinstance(default, (Same, Times)) else None)
    if value is MISSING:
        if _required(field):
            raise ConfigError(key, f"missing from config.json (model_type {fam.model_type!r})")
        return MISSING
    if value is not None and not isinstance(value, (Same, Times)):
        _check_type(key, field, value)
    return value


def _required(field: str) -> bool:
    """A spec field with no default (sizes): config.json must give it."""
    owner, _, name = field.rpartition(".")
    kind = SUBSPECS.get(owner, ArchitectureSpec)
    spec_field = next(f for f in dataclasses.fields(kind) if f.name == (name or field))
    return spec_field.default is dataclasses.MISSING and spec_field.default_factory is dataclasses.MISSING


def _check_type(key: str, field: str, value: Any) -> None:
    if field in INT_FIELDS:
        ok, what = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif field in NUMBER_FIELDS:
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif field in BOOL_FIELDS:
        ok, what = isinstance(value, bool), "true or false"
    elif field in STRING_FIELDS:
        ok, what = isinstance(value, str), "a string"
    elif field == "eos_token_id":
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, list) and all(
            isinstance(e, int) and not isinstance(e, bool) for e in value)
        what = "an integer or a list of integers"
    else:
        return
    if not ok:
        raise ConfigError(key, f"must be {what}, got {value!r:.60}")


def _switch_read(cfg: dict[str, Any], fam: Family, switch: Switch) -> dict[str, Any]:
    flags = tuple(cfg.get(key, fam.default(key)) for key in switch.keys)
    for values, fields in switch.table:
        if all(v is ANY or v == flag for v, flag in zip(values, flags)):
            return dict(fields)
    shown = ", ".join(f"{k}={v!r:.20}" for k, v in zip(switch.keys, flags))
    raise ConfigError(switch.keys[0], f"model_type {fam.model_type!r} has no layout for {shown}")


def _check_rope_types(cfg: dict[str, Any]) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        params = cfg.get(key)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise ConfigError(key, f"must be an object, got {params!r:.60}")
        for inner in [params, *(v for v in params.values() if isinstance(v, dict))]:
            for name in ("factor", "rope_theta", "partial_rotary_factor", "low_freq_factor", "high_freq_factor"):
                value = inner.get(name)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise ConfigError(f"{key}.{name}", f"must be a number, got {value!r:.60}")
            kind = inner.get("rope_type", inner.get("type"))
            if kind is not None and not isinstance(kind, str):
                raise ConfigError(f"{key}.rope_type", f"must be a string, got {kind!r:.60}")
    for key in ("rope_theta", "partial_rotary_factor"):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(key, f"must be a number, got {value!r:.60}")


def _rope_read(cfg: dict[str, Any], fam: Family, extra: dict[str, Any]) -> dict[str, Any]:
    """rope_theta, rope_scaling (parameters beyond theta, or None) and partial_rotary_factor from either rope format."""
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    if isinstance(params.get("full_attention"), dict):  # nested by layer type: global layers, then the local base
        local = (params.get("sliding_attention") or {}).get("rope_theta")
        rule = fam.extra.get("rope_local_base_freq")
        if rule and local is not None and local != rule.default:
            extra.setdefault("rope_local_base_freq", local)
        params = dict(params["full_attention"])
    theta, partial = (next(v for v in (params.pop(key, None), cfg.get(key), fam.default(key)) if v is not None)
                      for key in ("rope_theta", "partial_rotary_factor"))  # null: transformers' default
    if "type" in params and "rope_type" not in params:
        params["rope_type"] = params.pop("type")
    kind = params.get("rope_type", "default")
    return {"rope_theta": float(theta), "rope_scaling": None if kind == "default" else params,
            "partial_rotary_factor": float(partial)}


def _int_list(cfg: dict[str, Any], key: str) -> list[int] | None:
    value = cfg.get(key)
    if value is not None and not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ConfigError(key, f"must be a list of integers, got {value!r:.60}")
    return value


def _int(cfg: dict[str, Any], fam: Family, key: str, default: int) -> int:
    value = cfg.get(key)
    if value is None:
        value = fam.default(key) if fam.default(key) not in (MISSING, None) else default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(key, f"must be a non-negative integer, got {value!r:.60}")
    return value


def _nope_read(cfg: dict[str, Any], layers: int) -> tuple[int, ...]:
    """Layers without RoPE: no_rope_layers (1 = RoPE, 0 = NoPE), else every no_rope_layer_interval-th layer."""
    flags = _int_list(cfg, "no_rope_layers")
    if flags:
        if len(flags) != layers:
            raise ConfigError("no_rope_layers", f"must have num_hidden_layers={layers} entries, got {len(flags)}")
        return tuple(i for i, flag in enumerate(flags) if not flag)
    interval = cfg.get("no_rope_layer_interval") or 4  # transformers' default interval
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ConfigError("no_rope_layer_interval", f"must be a positive integer, got {interval!r:.60}")
    return tuple(i for i in range(layers) if (i + 1) % interval == 0)


def _window_key(rule: LayerRule) -> bool:
    """Whether the family reads sliding_window (it has local attention layers)."""
    return rule.rule in ("all_sliding", "window_layers", "alternate_window_layers") or "sliding_attention" in (rule.other, rule.nth)


def _layers_read(cfg: dict[str, Any], fam: Family, values: dict[str, Any]) -> tuple[int | None, tuple[str, ...] | None]:
    """(sliding_window, layer_types) as transformers derives them for this family."""
    rule, layers = fam.layers, values["num_layers"]
    window = cfg.get("sliding_window", fam.default("sliding_window")) if _window_key(rule) else None
    if window is not None:
        _check_type("sliding_window", "sliding_window", window)
    gated = all(cfg.get(key, fam.default(key)) for key in rule.gate if key != "sliding_window") and window
    if rule.gate and rule.rule != "rope" and not gated:  # the gate keys switch local attention off
        return None, None
    if rule.rule in ("full", "all_sliding"):
        return window or None, None
    explicit = cfg.get("layer_types")
    if explicit is not None:
        if not (isinstance(explicit, list) and all(isinstance(t, str) for t in explicit)):
            raise ConfigError("layer_types", f"must be a list of strings, got {explicit!r:.60}")
        return window, tuple(explicit)
    if rule.rule == "window_layers":  # layers from max_window_layers on slide
        start = _int(cfg, fam, "max_window_layers", layers)
        types = ["sliding_attention" if i >= start else "full_attention" for i in range(layers)]
    elif rule.rule == "alternate_window_layers":  # even layers below max_window_layers slide
        below = _int(cfg, fam, "max_window_layers", layers)
        types = ["sliding_attention" if (i + 1) % 2 and i < below else "full_attention" for i in range(layers)]
    elif rule.rule == "period":
        period = _int(cfg, fam, rule.period_key, rule.period) if rule.period_key else rule.period
        types = [rule.other if (i + 1) % max(period, 1) else rule.nth for i in range(layers)]
    else:  # rope: layers with RoPE are `other`, NoPE layers `nth` (when the gate keys allow)
        nth = rule.nth if all(cfg.get(key, fam.default(key)) for key in rule.gate) else rule.other
        types = [nth if i in values["nope_layers"] else rule.other for i in range(layers)]
    return (window if "sliding_attention" in types else None), tuple(types)


def _moe_layers_read(cfg: dict[str, Any], fam: Family, layers: int) -> tuple[int, ...] | None:
    """Indices of the MoE layers (None: all) under the family's placement rule."""
    if fam.moe_layers == "first_k_dense":
        moe = range(_int(cfg, fam, "first_k_dense_replace", 0), layers)
    elif fam.moe_layers == "sparse_step":
        step = max(_int(cfg, fam, "decoder_sparse_step", 1), 1)
        dense = set(_int_list(cfg, "mlp_only_layers") or [])
        moe = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
    elif fam.moe_layers == "interleave":
        explicit = _int_list(cfg, "moe_layers")
        step = max(_int(cfg, fam, "interleave_moe_layer_step", 1), 1)
        moe = explicit if explicit is not None else range(step - 1, layers, step)
    else:
        return None
    moe = tuple(sorted(set(moe)))
    return None if moe == tuple(range(layers)) else moe


def _build(values: dict[str, Any], model_type: str) -> ArchitectureSpec:
    """An ArchitectureSpec from flat values (dotted names for the sub-specs)."""
    top = {k: v for k, v in values.items() if "." not in k}
    for name, kind in SUBSPECS.items():
        sub = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith(name + ".")}
        if any(k != "layers" for k in sub):
            try:
                top[name] = kind(**sub)
            except TypeError as exc:
                raise ConfigError(name, f"incomplete settings: {exc}") from None
    try:
        return ArchitectureSpec(**top, model_type=model_type)
    except TypeError as exc:  # a value of the wrong JSON type reached a comparison
        raise ConfigError("config.json", f"a field has the wrong type: {exc}") from None


# ---- writing ----------------------------------------------------------------------------------

def _flat(spec: ArchitectureSpec) -> dict[str, Any]:
    flat = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in SUBSPECS}
    for name in SUBSPECS:
        sub = getattr(spec, name)
        if sub is not None:
            flat.update({f"{name}.{k}": v for k, v in dataclasses.asdict(sub).items()})
    return flat


def _defaults() -> dict[str, Any]:
    """Spec field defaults, flat (what a family that neither reads nor fixes a field implies)."""
    out = {f.name: f.default for f in dataclasses.fields(ArchitectureSpec)
           if f.default is not dataclasses.MISSING and f.name not in SUBSPECS}
    for name, kind in SUBSPECS.items():
        out.update({f"{name}.{f.name}": f.default for f in dataclasses.fields(kind) if f.default is not dataclasses.MISSING})
    return out


def _resolve(value: Any, flat: dict[str, Any]) -> Any:
    if isinstance(value, Same):
        return flat[value.field]
    if isinstance(value, Times):
        return value.factor * flat[value.field]
    return value


def _mismatch(field: str, value: Any, model_type: str, allowed: Any) -> SpecError:
    return SpecError(field, f"model_type {model_type!r} supports only {allowed!r:.80}; the spec has {value!r:.80}")


def hf_from_spec(spec: ArchitectureSpec, model_type: str | None = None, dtype: str = "bfloat16") -> dict[str, Any]:
    """The config.json dict for `spec` in the family `model_type` (default: spec.model_type).

    Raises SpecError naming the field when the family cannot express the spec (QK-norm in llama,
    an `extra` key that a checked field owns, ...).
    """
    fam = _family(model_type or spec.model_type)
    families.check_extra(fam, spec.extra)
    flat = _flat(spec)
    for name in SUBSPECS:
        wanted = any(f.startswith(name + ".") for f in [*fam.keys, *fam.fixed])
        if wanted != (getattr(spec, name) is not None):
            raise _mismatch(name, "set" if getattr(spec, name) else None, fam.model_type, "set" if wanted else None)
    cfg: dict[str, Any] = {"architectures": [fam.architecture], "model_type": fam.model_type}
    owned = set(RULE_FIELDS)
    for switch in fam.switches:
        keys, fields = _switch_write(fam, switch, flat)
        cfg.update(keys)
        owned |= set(fields)
    for field, value in fam.fixed.items():
        if flat.get(field) != _resolve(value, flat):
            raise _mismatch(field, flat.get(field), fam.model_type, _resolve(value, flat))
    owned |= set(fam.fixed)
    writer: dict[str, str] = {}
    for field, key in {**KEYS, **fam.keys}.items():
        if key is None or field in owned or field not in flat:
            continue
        owned.add(field)
        if key in writer and cfg[key] != flat[field]:
            raise SpecError(field, f"must equal {writer[key]}={cfg[key]!r:.40}: model_type {fam.model_type!r} stores both in {key!r}")
        cfg[key], writer[key] = flat[field], field
    for field, default in _defaults().items():
        if field not in owned and field in flat and flat[field] != default:
            raise _mismatch(field, flat[field], fam.model_type, default)
    _heads_write(spec, fam, cfg)
    _check_honoured(spec, fam)
    if spec.position == "rope":
        cfg["rope_parameters"] = _rope_write(spec, fam)
    _layers_write(spec, fam, cfg)
    if fam.moe_layers is not None:
        cfg.update(_moe_layers_write(spec, fam))
    cfg.update(spec.extra)
    cfg.update({"use_cache": True, "dtype": dtype})
    return cfg


def _switch_write(fam: Family, switch: Switch, flat: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """(the flag values, the spec fields they set) of the first table row matching the spec."""
    for values, fields in switch.table:
        if all(flat.get(f) == _resolve(v, flat) for f, v in fields.items()):
            return {key: fam.default(key) if v is ANY else v for key, v in zip(switch.keys, values)}, fields
    field = next(iter(switch.table[0][1]))
    choices = sorted({str(_resolve(row[field], flat)) for _, row in switch.table if field in row})
    raise _mismatch(field, flat.get(field), fam.model_type, " or ".join(choices))


def _heads_write(spec: ArchitectureSpec, fam: Family, cfg: dict[str, Any]) -> None:
    divides = spec.hidden_size % spec.num_heads == 0
    if fam.heads_divide_hidden and not divides:
        raise _mismatch("num_heads", spec.num_heads, fam.model_type, f"a count dividing hidden_size={spec.hidden_size}")
    if spec.mla is not None:
        return
    key = {**KEYS, **fam.keys}["head_dim"]
    if key:
        cfg[key] = spec.head_dim
    elif not divides or spec.head_dim != spec.hidden_size // spec.num_heads:
        raise _mismatch("head_dim", spec.head_dim, fam.model_type, f"hidden_size / num_heads = {spec.hidden_size / spec.num_heads:g}")


def _rope_write(spec: ArchitectureSpec, fam: Family) -> dict[str, Any]:
    rope: dict[str, Any] = {**(spec.rope_scaling or {"rope_type": "default"}), "rope_theta": spec.rope_theta}
    if spec.partial_rotary_factor != 1.0 or fam.default("partial_rotary_factor") != 1.0:
        rope["partial_rotary_factor"] = spec.partial_rotary_factor
    if not fam.rope_per_layer_type:
        return rope
    local = spec.extra.get("rope_local_base_freq", fam.extra["rope_local_base_freq"].default)
    return {"full_attention": rope, "sliding_attention": {"rope_type": "default", "rope_theta": local}}


def check_layout(spec: ArchitectureSpec) -> None:
    """Raise SpecError naming the field unless the spec's family writes its layout (windows, per-layer attention kinds,
    MoE layers, shared experts, NoPE layers) in config.json and its transformers code honours it (`Family.layouts`)."""
    fam = _family(spec.model_type)
    if spec.moe is not None and not fam.is_moe:
        moe_families = ", ".join(name for name, row in families.FAMILIES.items() if row.is_moe)
        raise SpecError("moe", f"model_type {fam.model_type!r} has no MoE layers (transformers builds a dense MLP in every "
                               f"layer); MoE families: {moe_families}")
    _check_honoured(spec, fam)
    _layers_write(spec, fam, {})
    if spec.moe is not None:
        _moe_layers_write(spec, fam)
        fixed = fam.fixed.get("moe.shared_experts")
        if fixed is not None and spec.moe.shared_experts != fixed:
            raise _mismatch("moe.shared_experts", spec.moe.shared_experts, fam.model_type, fixed)


def _check_honoured(spec: ArchitectureSpec, fam: Family) -> None:
    """SpecError for the first layout switch of `spec` the family's transformers code ignores."""
    for switch in families.layout_switches(spec):
        if switch not in fam.layouts:
            others = families.honouring(switch)
            raise SpecError(families.LAYOUT_FIELDS[switch], f"transformers' {fam.architecture} does not honour "
                            f"{families.LAYOUTS[switch]}: model_type {fam.model_type!r} would compute another model; "
                            f"families that do: {', '.join(others) or 'none'}")


def _layers_write(spec: ArchitectureSpec, fam: Family, cfg: dict[str, Any]) -> None:
    rule, types = fam.layers, spec.resolved_layer_types
    if spec.nope_layers and not fam.nope:
        raise _mismatch("nope_layers", list(spec.nope_layers), fam.model_type, [])
    if fam.nope:
        cfg["no_rope_layers"] = [0 if i in spec.nope_layers else 1 for i in range(spec.num_layers)]
    if rule.rule == "full":
        if spec.sliding_window is not None or set(types) != {"full_attention"}:
            raise _mismatch("sliding_window", spec.sliding_window, fam.model_type, None)
        return
    allowed = {"sliding_attention", "full_attention"} if rule.rule != "period" and rule.rule != "rope" else {rule.other, rule.nth}
    if rule.rule == "rope":
        allowed = {rule.other, rule.nth}
        expected = tuple(rule.nth if i in spec.nope_layers else rule.other for i in range(spec.num_layers))
        if types != expected and not (rule.gate and types == tuple(rule.other for _ in types)):
            raise _mismatch("layer_types", list(types), fam.model_type, f"{rule.nth} on the NoPE layers, {rule.other} elsewhere")
    if not set(types) <= allowed:
        raise _mismatch("layer_types", sorted(set(types) - allowed), fam.model_type, sorted(allowed))
    if _window_key(rule):
        cfg["sliding_window"] = spec.sliding_window
    if "use_sliding_window" in rule.gate:
        cfg["use_sliding_window"] = "sliding_attention" in types
    if rule.rule == "all_sliding":
        if len(set(types)) > 1:
            raise _mismatch("layer_types", list(types), fam.model_type, "the same window on every layer")
        return
    cfg["layer_types"] = list(types)


def _moe_layers_write(spec: ArchitectureSpec, fam: Family) -> dict[str, Any]:
    layers = spec.moe.layers
    every = list(range(spec.num_layers))
    if fam.moe_layers == "all":
        if layers is not None:
            raise _mismatch("moe.layers", list(layers), fam.model_type, "every layer (null)")
        return {}
    if fam.moe_layers == "first_k_dense":
        first = layers[0] if layers else 0
        if layers is not None and list(layers) != every[first:]:
            raise _mismatch("moe.layers", list(layers), fam.model_type, "all layers from first_k_dense_replace on")
        return {"first_k_dense_replace": first}
    if fam.moe_layers == "sparse_step":
        dense = [] if layers is None else [i for i in every if i not in layers]
        return {"decoder_sparse_step": 1, "mlp_only_layers": dense}
    return {"moe_layers": every if layers is None else list(layers), "interleave_moe_layer_step": 1}


# ---- files ------------------------------------------------------------------------------------

def read_config(path: str | Path, field: str = "config") -> dict[str, Any]:
    """Parse a config.json file, or the config.json inside a model directory (read through the workspace boundary)."""
    from archsmith.files import kind, read_text

    path = Path(path)
    if kind(path, field) == "dir":
        path = path / "config.json"
    if kind(path, field) != "file":
        raise ConfigError(field, f"no such file: {path}")
    try:
        data = json.loads(read_text(path, field))
    except json.JSONDecodeError as exc:
        raise ConfigError(field, f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise ConfigError(field, f"{path} nests too deeply to be a config.json") from None
    if not isinstance(data, dict):
        raise ConfigError(field, f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def load_spec(path: str | Path) -> ArchitectureSpec:
    """ArchitectureSpec from a config.json path or a model directory."""
    return spec_from_hf(read_config(path))
