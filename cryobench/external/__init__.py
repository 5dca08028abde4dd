"""Optimizers of other libraries on cryobench tasks, unchanged, through the counted oracle.

A reference ``torch:package.module.Class`` names a ``torch.optim.Optimizer`` subclass
(:mod:`cryobench.external.torch_optim`), ``optax:package.module.factory`` an optax
transformation factory (:mod:`cryobench.external.optax_transform`); a bare name means
``torch.optim.Name`` / ``optax.name``. They work wherever an optimizer is named: ``cryobench run
TASK torch:torch.optim.AdamW --set lr=3e-4``, grid files (``optimizers =
["optax:optax.lion"]``, ``[params."optax:optax.lion"]``), ``cryobench tune`` and the
conformance suite (``pytest tests/test_conformance.py --optimizer torch:torch.optim.Adam``).
Hyper-parameters come from the signature with the library's defaults
(:mod:`cryobench.external.common`). The libraries are optional: ``pip install
'cryobench[torch]'`` (PyTorch, schedulefree, pytorch-optimizer) or ``'cryobench[jax]'`` (JAX,
optax).

An external method is an :class:`ExternalMethod`: its ``identity`` (the library's version, the
class's or factory's qualified name and arguments, the adapter's code) is what the cell
fingerprint hashes. :func:`torch_method` and :func:`optax_method` declare one in Python, with
arguments the command line cannot give (strings, callables, a searchable ``momentum`` for
``optax.sgd``): put it in a file and run ``path/file.py:attr``.
"""
from __future__ import annotations

from cryobench.errors import InputError
from cryobench.external import optax_transform, torch_optim
from cryobench.external.common import ExternalMethod
from cryobench.external.optax_transform import optax_method
from cryobench.external.torch_optim import torch_method

ADAPTERS = {"torch": torch_optim, "optax": optax_transform}

__all__ = ["ExternalMethod", "handles", "optax_method", "resolve", "torch_method"]


def handles(reference: str) -> bool:
    """Whether ``reference`` names another library's optimizer (``torch:…``, ``optax:…``)."""
    library, sep, _ = reference.partition(":")
    return bool(sep) and library in ADAPTERS


def resolve(reference: str) -> ExternalMethod:
    """The method a ``torch:…`` or ``optax:…`` reference names; one line if it cannot be had."""
    library, _, target = reference.partition(":")
    if not target:
        raise InputError(f"{reference}: name the optimizer after '{library}:', e.g. "
                         f"{'torch:torch.optim.AdamW' if library == 'torch' else 'optax:optax.adam'}")
    return ADAPTERS[library].resolve(reference, target)
