"""Whole-model PyTorch state_dicts to and from Flax models: NNX module trees and Linen variable trees.

A torch key is the dotted path of a parameter or buffer (``layer1.0.bn1.running_mean``). The Flax side is matched
by the same path: NNX attribute names, ``nnx.List`` / ``nnx.Dict`` entries and ``nnx.Sequential`` members (whose
``layers`` list torch's Sequential does not name); Linen's collection trees, where setup lists name their members
``name_i``. Each layer a port needs is converted by its own rule (`LAYOUTS`): jconv's convs keep torch's layout;
Flax's Linear/Dense and Conv kernels are transposed; BatchNorm's scale, bias, mean and var are torch's weight,
bias, running_mean and running_var (``num_batches_tracked`` has no Flax counterpart and is ignored); LayerNorm,
GroupNorm and RMSNorm scales are weights; an Embed's embedding is its weight. Any other Param or BatchStat keeps
its attribute name and layout, as an ``nn.Parameter`` does in torch.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Tuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jconv.layers import check_mapping, checked_array, incompatible_keys_message


class IncompatibleKeys(NamedTuple):
    """What torch's load_state_dict returns: keys the model has and the state_dict lacks, and the reverse."""

    missing_keys: List[str]
    unexpected_keys: List[str]


def _same(a):
    return a


def _transpose_matrix(a):
    return a.T


def _kernel_to_torch(a):
    """Flax's conv kernel (*spatial, in/groups, out) as torch's weight (out, in/groups, *spatial)."""
    return np.transpose(a, (a.ndim - 1, a.ndim - 2, *range(a.ndim - 2)))


def _kernel_from_torch(a):
    return np.transpose(a, (*range(2, a.ndim), 1, 0))


# (torch name, Flax layout -> torch layout, torch layout -> Flax layout) for each Flax attribute name.
_Rule = Tuple[str, Callable, Callable]
_TRANSPOSED: _Rule = ("weight", _transpose_matrix, _transpose_matrix)
_NORM = {"scale": ("weight", _same, _same), "bias": ("bias", _same, _same)}
_BATCH_NORM = {**_NORM, "mean": ("running_mean", _same, _same), "var": ("running_var", _same, _same)}
_FLAX_CONV = {"kernel": ("weight", _kernel_to_torch, _kernel_from_torch), "bias": ("bias", _same, _same)}

LAYOUTS: Dict[type, Dict[str, _Rule]] = {
    nnx.Linear: {"kernel": _TRANSPOSED, "bias": ("bias", _same, _same)},
    nnx.Conv: _FLAX_CONV,
    nnx.BatchNorm: _BATCH_NORM,
    nnx.LayerNorm: _NORM,
    nnx.GroupNorm: _NORM,
    nnx.RMSNorm: _NORM,
    nnx.Embed: {"embedding": ("weight", _same, _same)},
}
# torch buffers with no Flax counterpart, by the torch class's local name: ignored when loading.
_IGNORED = {"num_batches_tracked"}


class _Entry(NamedTuple):
    key: str  # torch's dotted key
    value: Any  # the Flax value, in Flax's layout
    to_torch: Callable
    from_torch: Callable
    target: Any  # where a loaded value goes: an nnx.Variable, or a Linen (collection, *path)


def _entry(key: str, value, rule: _Rule, target) -> _Entry:
    return _Entry(key + rule[0], value, rule[1], rule[2], target)


def _torch_shape(e: _Entry) -> Tuple[int, ...]:
    return e.to_torch(np.broadcast_to(np.zeros((), np.int8), np.shape(e.value))).shape


def _check_and_convert(name: str, state_dict: Mapping[str, Any], entries: List[_Entry], strict: bool):
    """{key: value in Flax's layout} for every entry the state_dict has, and the IncompatibleKeys; raises (before
    anything is written) on a bad value, and on missing or unexpected keys when strict."""
    check_mapping(name, state_dict)
    if not isinstance(strict, bool):
        raise TypeError(f"load_state_dict: strict must be a bool, but got {strict!r}")
    expected = {e.key: e for e in entries}  # a tied parameter's keys each name one entry
    ignored = {k.rsplit(".", 1)[0] + "." + b if "." in k else b
               for k in expected if k.endswith("running_mean") for b in _IGNORED}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and k not in ignored]
    if strict and (missing or unexpected):
        raise KeyError(incompatible_keys_message(name, missing, unexpected))
    converted = {}
    for key, e in expected.items():
        if key in state_dict:
            dtype = jnp.asarray(e.value).dtype
            array = checked_array(name, key, state_dict[key], _torch_shape(e), dtype)
            converted[key] = jnp.asarray(e.from_torch(array), dtype)
    return converted, IncompatibleKeys(missing, unexpected)


# --- NNX -------------------------------------------------------------------------------------------------------


def _children(node) -> Iterator[Tuple[str, Any]]:
    """(name, child) in definition order; an nnx.Sequential's members by index, as torch's Sequential names them."""
    if isinstance(node, nnx.Sequential):
        node = node.layers
    if isinstance(node, (nnx.List, list, tuple)):
        yield from ((str(i), child) for i, child in enumerate(node))
    elif isinstance(node, (nnx.Dict, dict)):
        yield from ((str(k), child) for k, child in node.items())
    else:
        yield from ((k, v) for k, v in vars(node).items() if not k.startswith("_"))


def _rule(owner, name: str) -> _Rule:
    for cls, rules in LAYOUTS.items():
        if isinstance(owner, cls):
            return rules.get(name, (name, _same, _same))
    return (name, _same, _same)


def _nnx_entries(node, prefix: str = "", ancestors: Tuple[int, ...] = ()) -> Iterator[_Entry]:
    for name, child in _children(node):
        if isinstance(child, (nnx.Param, nnx.BatchStat)):
            yield _entry(prefix, child[...], _rule(node, name), child)
        elif isinstance(child, (nnx.Pytree, list, tuple, dict)) and id(child) not in ancestors + (id(node),):
            yield from _nnx_entries(child, f"{prefix}{name}.", ancestors + (id(node),))


def _check_module(op: str, module) -> None:
    if not isinstance(module, nnx.Module):
        raise TypeError(f"{op}: expected an nnx.Module, but got {type(module).__name__}")


def state_dict(module) -> Dict[str, np.ndarray]:
    """The NNX module tree's parameters and batch statistics under torch's keys and in torch's layouts (NumPy
    arrays), for torch's `load_state_dict` after `torch.from_numpy`. Buffers Flax does not keep (BatchNorm's
    num_batches_tracked) are absent; torch's BatchNorm keeps its own value when the key is missing."""
    _check_module("state_dict", module)
    return {e.key: np.asarray(e.to_torch(np.asarray(e.value))) for e in _nnx_entries(module)}


def load_state_dict(module, state_dict: Mapping[str, Any], *, strict: bool = True) -> IncompatibleKeys:
    """Load a whole PyTorch model's state_dict into an NNX module tree whose attribute names mirror the torch
    model's, in place. Returns (missing_keys, unexpected_keys) as torch does; with strict=True either raises a
    KeyError naming them. Every value is checked (numeric, shape) before anything is written, so after an error
    the module is as it was. Values may be NumPy, JAX or torch arrays (detached; bfloat16 included); each is cast
    to the dtype of the variable it replaces."""
    _check_module("load_state_dict", module)
    entries = list(_nnx_entries(module))
    converted, incompatible = _check_and_convert(type(module).__name__, state_dict, entries, strict)
    for e in entries:
        if e.key in converted:
            e.target[...] = converted[e.key]  # an in-place update: the variable keeps its sharding
    return incompatible


# --- Linen -----------------------------------------------------------------------------------------------------


def _linen_rules(params: Mapping[str, Any], stats: Mapping[str, Any]) -> Dict[str, _Rule]:
    """The conversion rules of one Linen module's own leaves, told apart by their names (the variable tree does not
    record the module's class): batch statistics mean a BatchNorm, a 2-D kernel a Dense, a larger one a Conv."""
    if "mean" in stats and "var" in stats:
        return _BATCH_NORM
    kernel = params.get("kernel")
    if kernel is not None:
        return {"kernel": _TRANSPOSED, "bias": ("bias", _same, _same)} if np.ndim(kernel) == 2 else _FLAX_CONV
    if "scale" in params:
        return _NORM
    if "embedding" in params:
        return {"embedding": ("weight", _same, _same)}
    return {}


_LIST_MEMBER = re.compile(r"(.+)_(\d+)")


def _torch_segments(names) -> Dict[str, str]:
    """Linen's names for one module's children as torch's: a setup list's members `name_i` are `name.i`, and
    nn.Sequential's `layers_i` (when they are all its children) are `i`."""
    members = [_LIST_MEMBER.fullmatch(n) for n in names]
    if names and all(m and m.group(1) == "layers" for m in members):
        return {n: m.group(2) for n, m in zip(names, members)}
    return {n: f"{m.group(1)}.{m.group(2)}" if m else n for n, m in zip(names, members)}


def _matching_segment(name: str, default: str, prefix: str, torch_keys) -> str:
    """The torch segment for Linen child `name` that the state_dict uses: `default`, the name as it is, or the name
    split at one underscore (Linen names a setup dict's members `attr_key`); `default` when none is used."""
    splits = [f"{name[:i]}.{name[i + 1:]}" for i in range(len(name) - 1, 0, -1) if name[i] == "_"]
    for segment in (default, name, *splits):
        if any(k.startswith(f"{prefix}{segment}.") for k in torch_keys):
            return segment
    return default


def _linen_entries(params, stats, torch_keys=(), prefix: str = "", path: Tuple[str, ...] = ()) -> Iterator[_Entry]:
    leaves = {k: v for k, v in params.items() if not isinstance(v, Mapping)}
    stat_leaves = {k: v for k, v in stats.items() if not isinstance(v, Mapping)}
    rules = _linen_rules(leaves, stat_leaves)
    for collection, group in (("params", leaves), ("batch_stats", stat_leaves)):
        for name, value in group.items():
            yield _entry(prefix, value, rules.get(name, (name, _same, _same)), (collection, *path, name))
    children = [k for k in {**params, **stats} if isinstance(params.get(k, stats.get(k)), Mapping)]
    for child, default in _torch_segments(children).items():
        segment = _matching_segment(child, default, prefix, torch_keys)
        yield from _linen_entries(params.get(child, {}), stats.get(child, {}), torch_keys, f"{prefix}{segment}.",
                                  path + (child,))


def _linen_collections(variables) -> Tuple[Mapping, Mapping]:
    if not isinstance(variables, Mapping):
        raise TypeError(f"expected a Linen variable tree ({{'params': ..., 'batch_stats': ...}}) or a params tree, "
                        f"but got {type(variables).__name__}")
    if "params" in variables and isinstance(variables["params"], Mapping):
        return variables["params"], variables.get("batch_stats", {})
    return variables, {}


def linen_state_dict(variables, like: Mapping[str, Any] = ()) -> Dict[str, np.ndarray]:
    """A Linen variable tree (or a params tree) under torch's keys and in torch's layouts (NumPy arrays). Linen
    names a setup dict's members `attr_key`, which reads the same as an attribute of that name: pass `like` (the
    torch model's state_dict, or its keys) and each name is matched to the torch model's."""
    params, stats = _linen_collections(variables)
    return {e.key: np.asarray(e.to_torch(np.asarray(e.value))) for e in _linen_entries(params, stats, list(like))}


def linen_load_state_dict(variables, state_dict: Mapping[str, Any], *, strict: bool = True):
    """(new variables, IncompatibleKeys): the tree with the torch state_dict's values in place of its own, checked
    as `load_state_dict` checks them; the input tree is not changed. A params tree in gives a params tree out."""
    params, stats = _linen_collections(variables)
    entries = list(_linen_entries(params, stats, list(state_dict) if isinstance(state_dict, Mapping) else ()))
    converted, incompatible = _check_and_convert("Linen variables", state_dict, entries, strict)
    out = _unfreeze({"params": params, "batch_stats": stats})
    for e in entries:
        if e.key in converted:
            node = out
            for name in e.target[:-1]:
                node = node[name]
            node[e.target[-1]] = converted[e.key]
    if params is variables:
        return out["params"], incompatible
    return {**variables, **{k: out[k] for k in ("params", "batch_stats") if k in variables}}, incompatible


def _unfreeze(tree):
    return {k: _unfreeze(v) for k, v in tree.items()} if isinstance(tree, Mapping) else tree
