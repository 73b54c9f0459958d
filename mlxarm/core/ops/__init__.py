"""All op modules; importing this package registers every primitive and public function.

The package namespace holds every public op plus the private hooks the array type uses
(``_getitem``, ``_setitem``, ``_AtIndexer``, the operator helpers).
"""
from importlib import import_module

_MODULES = ["elementwise", "shape", "creation", "reduction", "scan", "indexing", "linalg", "sort",
            "misc", "conv", "quantized"]

for _name in _MODULES:
    _mod = import_module(f"{__name__}.{_name}")
    for _attr, _val in vars(_mod).items():
        if callable(_val) and not _attr.startswith("__") and getattr(_val, "__module__", None) == _mod.__name__:
            globals()[_attr] = _val
