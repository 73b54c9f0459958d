"""``nn.Module``: a dict of a model's arrays, submodules and containers of them.

Arrays, dicts, lists and tuples assigned as attributes live in the dict (so they are found by
``parameters()`` and friends); every other attribute (hyper-parameters, callables) is a plain
instance attribute. Keys starting with ``_`` are never parameters.
"""
from __future__ import annotations

import textwrap
from typing import Any, Callable, List, Optional, Tuple, Union

import mlxarm.core as mx
from mlxarm.utils import tree_flatten, tree_unflatten

_CONTAINERS = (mx.array, dict, list, tuple)


class Module(dict):
    """Base class of layers and models: holds arrays and submodules, walks them as trees."""

    __call__: Callable

    def __init__(self):
        self._no_grad = set()
        self._training = True

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (see ``train``/``eval``)."""
        return self._training

    @property
    def state(self) -> "Module":
        """The module itself: its dict is its state, so edits are visible in the module."""
        return self

    def _extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = tree_flatten(self.children(), is_leaf=self.is_module)
        lines = [f"{type(self).__name__}({self._extra_repr()}"]
        lines += [textwrap.indent(f"({k}): {v!r}", "  ") for k, v in children]
        return "\n".join(lines) + ("\n)" if children else ")")

    def __getattr__(self, key: str):
        value = self.get(key, None)
        if value is not None:
            return value
        return super().__getattribute__(key)

    def __setattr__(self, key: str, val: Any):
        if isinstance(val, _CONTAINERS):
            # A plain attribute of that name would shadow the dict entry on lookup.
            if hasattr(self, key) and key not in self:
                delattr(self, key)
            self[key] = val
        else:
            super().__setattr__(key, val)
            self.pop(key, None)

    def __delattr__(self, name):
        if self.get(name, None) is not None:
            del self[name]
        else:
            super().__delattr__(name)

    # -- weights I/O -------------------------------------------------------------------------

    def load_weights(self, file_or_weights: Union[str, List[Tuple[str, mx.array]]],
                     strict: bool = True) -> "Module":
        """Set parameters from a ``.npz``/``.safetensors`` file or a list of ``(name, array)``.

        With ``strict`` the names must be exactly the model's and the shapes must match.
        """
        weights = file_or_weights
        if isinstance(weights, str):
            weights = list(mx.load(weights).items())
        if strict:
            _check_exact_weights(dict(weights), tree_flatten(self.parameters(), destination={}))
        if len(weights) != 0:
            self.update(tree_unflatten(weights), strict=False)
        return self

    def save_weights(self, file: str):
        """Save the parameters, flattened to dotted names, as ``.npz`` or ``.safetensors``."""
        flat = tree_flatten(self.parameters(), destination={})
        if file.endswith(".npz"):
            mx.savez(file, **flat)
        elif file.endswith(".safetensors"):
            mx.save_safetensors(file, flat)
        else:
            raise ValueError(
                f"Unsupported file extension for {file}. Use '.npz' or '.safetensors'.")

    # -- filters -----------------------------------------------------------------------------

    @staticmethod
    def is_module(value) -> bool:
        return isinstance(value, Module)

    @staticmethod
    def valid_child_filter(module, key, value) -> bool:
        return isinstance(value, (dict, list))

    @staticmethod
    def valid_parameter_filter(module, key, value) -> bool:
        return isinstance(value, (dict, list, mx.array)) and not key.startswith("_")

    @staticmethod
    def trainable_parameter_filter(module, key, value) -> bool:
        return Module.valid_parameter_filter(module, key, value) and key not in module._no_grad

    def filter_and_map(self, filter_fn: Callable[["Module", str, Any], bool],
                       map_fn: Optional[Callable] = None,
                       is_leaf_fn: Optional[Callable[["Module", str, Any], bool]] = None):
        """The module's contents kept by ``filter_fn(module, key, value)``, recursively, with
        ``map_fn`` applied to every leaf (``is_leaf_fn`` decides what a leaf is).

        Inside plain dicts and lists the key passed to the filters is the dotted path from the
        enclosing module, and entries filtered out there are left as ``{}``.
        """
        map_fn = map_fn or (lambda x: x)
        is_leaf_fn = is_leaf_fn or (lambda m, k, v: not isinstance(v, (Module, dict, list)))
        return _filtered_children(self, filter_fn, map_fn, is_leaf_fn)

    def parameters(self):
        """All arrays of the module and its submodules, as a tree of dicts and lists."""
        return self.filter_and_map(self.valid_parameter_filter)

    def trainable_parameters(self):
        """Like ``parameters`` without the frozen arrays."""
        return self.filter_and_map(self.trainable_parameter_filter)

    def children(self):
        """The direct submodules, in the dicts/lists that hold them."""
        return self.filter_and_map(self.valid_child_filter,
                                   is_leaf_fn=lambda m, k, v: isinstance(v, Module))

    def leaf_modules(self):
        """The submodules that hold no other module."""

        def is_leaf_module(m, k, v):
            return isinstance(v, Module) and len(tree_flatten(v.children())) == 0

        return self.filter_and_map(self.valid_child_filter, is_leaf_fn=is_leaf_module)

    # -- updates -----------------------------------------------------------------------------

    def update(self, parameters: dict, strict: bool = True) -> "Module":
        """Replace arrays with those at the same places in ``parameters`` (a full or partial
        tree like ``parameters()``); with ``strict`` every place must hold an array already."""
        _update_parameters(self, parameters, strict)
        return self

    def apply(self, map_fn: Callable[[mx.array], mx.array],
              filter_fn: Optional[Callable[["Module", str, Any], bool]] = None) -> "Module":
        """Replace every (filtered) parameter ``p`` with ``map_fn(p)``."""
        filter_fn = filter_fn or Module.valid_parameter_filter
        self.update(self.filter_and_map(filter_fn, map_fn))
        return self

    def update_modules(self, modules: dict, strict: bool = True) -> "Module":
        """Replace submodules with those at the same places in ``modules``."""
        _update_modules(self, modules, strict)
        return self

    def apply_to_modules(self, apply_fn: Callable[[str, "Module"], Any]) -> "Module":
        """Call ``apply_fn(dotted_path, module)`` on this module and every submodule."""
        pending = [("", self)]
        while pending:
            prefix, module = pending.pop()
            apply_fn(prefix, module)
            pending.extend(tree_flatten(module.children(), prefix="." + prefix if prefix else "",
                                        is_leaf=self.is_module))
        return self

    def modules(self):
        """This module and all its submodules."""
        found = []
        self.apply_to_modules(lambda k, m: found.append(m))
        return found

    def named_modules(self):
        """``(dotted_path, module)`` for this module (path ``""``) and all its submodules."""
        found = []
        self.apply_to_modules(lambda k, m: found.append((k, m)))
        return found

    # -- freezing ----------------------------------------------------------------------------

    def _validate_keys(self, keys, strict):
        keys = keys if isinstance(keys, list) else [keys]
        if strict:
            for k in keys:
                if k not in self:
                    raise KeyError(f"Module doesn't contain member {k}.")
        return keys

    def _validate_keys_recursive(self, keys):
        # With recursion a key only has to exist in some module of the tree.
        keys = keys if isinstance(keys, list) else [keys]
        modules = self.modules()
        for k in keys:
            if not any(k in m for m in modules):
                raise KeyError(f"Module doesn't contain member {k}.")

    def _for_modules(self, action, keys, recurse, strict):
        if recurse:
            if strict and keys is not None:
                self._validate_keys_recursive(keys)
                strict = False
            self.apply_to_modules(lambda _, m: action(m, strict))
        else:
            action(self, strict)
        return self

    def freeze(self, *, recurse: bool = True, keys: Optional[Union[str, List[str]]] = None,
               strict: bool = False) -> "Module":
        """Exclude parameters (``keys``, or all of them) from the trainable parameters."""

        def freeze_one(m, strict):
            local = keys
            if local is None:
                own = m.filter_and_map(lambda mm, k, v: not isinstance(v, Module)
                                       and mm.valid_parameter_filter(mm, k, v))
                local = [k for k, _ in tree_flatten(own)]
            m._no_grad.update(m._validate_keys(local, strict))

        return self._for_modules(freeze_one, keys, recurse, strict)

    def unfreeze(self, *, recurse: bool = True, keys: Optional[Union[str, List[str]]] = None,
                 strict: bool = False) -> "Module":
        """Make parameters (``keys``, or all of them) trainable again."""

        def unfreeze_one(m, strict):
            if keys is None:
                m._no_grad.clear()
            else:
                m._no_grad.difference_update(m._validate_keys(keys, strict))

        return self._for_modules(unfreeze_one, keys, recurse, strict)

    # -- modes and dtypes --------------------------------------------------------------------

    def _set_training_mode(self, mode: bool) -> None:
        self._training = mode

    def train(self, mode: bool = True) -> "Module":
        """Set training mode (``mode=False`` is evaluation mode) on every module."""
        self.apply_to_modules(lambda _, m: m._set_training_mode(mode))
        return self

    def eval(self) -> "Module":
        """Set evaluation mode on every module."""
        return self.train(False)

    def set_dtype(self, dtype: mx.Dtype,
                  predicate: Optional[Callable[[mx.Dtype], bool]] = lambda x: mx.issubdtype(
                      x, mx.floating)):
        """Cast the parameters whose dtype satisfies ``predicate`` (floating ones by default)."""
        if predicate is None:
            predicate = lambda _: True  # noqa: E731
        self.apply(lambda x: x.astype(dtype) if predicate(x.dtype) else x)


def _check_exact_weights(new: dict, current: dict) -> None:
    extras = new.keys() - current.keys()
    if extras:
        raise ValueError(f"Received {len(extras)} parameters not in model: \n"
                         + ",\n".join(sorted(extras)) + ".")
    missing = current.keys() - new.keys()
    if missing:
        raise ValueError(f"Missing {len(missing)} parameters: \n"
                         + ",\n".join(sorted(missing)) + ".")
    for name, value in current.items():
        incoming = new[name]
        if not isinstance(incoming, mx.array):
            raise ValueError(f"Expected mx.array but received {type(incoming)} "
                             f"for parameter {name}")
        if incoming.shape != value.shape:
            raise ValueError(f"Expected shape {value.shape} but received shape "
                             f"{incoming.shape} for parameter {name}")


def _filtered_children(module, filter_fn, map_fn, is_leaf_fn):
    return {k: _filtered(module, k, v, filter_fn, map_fn, is_leaf_fn)
            for k, v in module.items() if filter_fn(module, k, v)}


def _filtered(owner, key, value, filter_fn, map_fn, is_leaf_fn):
    if is_leaf_fn(owner, key, value):
        return map_fn(value)
    if isinstance(value, Module):
        return _filtered_children(value, filter_fn, map_fn, is_leaf_fn)
    if isinstance(value, (dict, list)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        kept = {}
        for k, v in items:
            path = f"{key}.{k}"
            kept[k] = (_filtered(owner, path, v, filter_fn, map_fn, is_leaf_fn)
                       if filter_fn(owner, path, v) else {})
        return kept if isinstance(value, dict) else list(kept.values())
    raise RuntimeError("Unexpected leaf found while traversing the module")


def _entries(parameters):
    return parameters.items() if isinstance(parameters, dict) else enumerate(parameters)


def _update_parameters(dst, parameters, strict):
    if not isinstance(parameters, (dict, list)):
        if strict:
            raise ValueError(f"Received invalid type: {type(parameters).__name__}.")
        return
    for k, new_value in _entries(parameters):
        if isinstance(parameters, dict):
            if k not in dst:
                if strict:
                    raise ValueError(f'Module does not have parameter named "{k}".')
                continue
        elif k >= len(dst):
            if strict:
                raise ValueError(f"List index {k} is out of bounds for destination of length "
                                 f"{len(dst)}.")
            continue
        current = dst[k]
        if isinstance(current, mx.array):
            if strict and not isinstance(new_value, mx.array):
                raise ValueError(f"Received invalid type: {type(new_value).__name__}.")
            dst[k] = new_value
        else:
            _update_parameters(current, new_value, strict)


def _update_modules(dst, modules, strict):
    if not isinstance(modules, (dict, list)):
        if strict:
            raise ValueError(f"Received invalid type: {type(modules).__name__}.")
        return
    for k, new_value in _entries(modules):
        if isinstance(modules, dict):
            if k not in dst:
                if strict:
                    raise ValueError(f'Module does not have sub-module named "{k}".')
                continue
        elif k >= len(dst):
            if strict:
                raise ValueError(f"List index {k} is out of bounds for destination of length "
                                 f"{len(dst)}.")
            continue
        current = dst[k]
        if isinstance(current, Module) and isinstance(new_value, Module):
            dst[k] = new_value
        elif isinstance(current, (dict, list)):
            _update_modules(current, new_value, strict)
        elif strict and new_value != {}:
            raise ValueError(f"Received invalid type: {type(new_value).__name__}.")
