"""A JSON-ready description of a loss, miner or module by its constructor arguments (for
checkpoint settings and the defences' reprs)."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

__all__ = ["hyperparameters"]


_SIMPLE = (bool, int, float, str, type(None))


def hyperparameters(obj: Any) -> Any:
    """A JSON-ready description of a loss, miner or other module by its constructor arguments.

    ``repr`` of a pytorch-metric-learning loss or miner leaves out its margins, so two losses
    with different margins would look alike; this lists every constructor argument stored under
    its own name (numbers, strings, tuples of them), then the sub-modules, recursively. Counters
    a module updates when called (such as a miner's ``num_triplets``) are not constructor
    arguments and are left out. Anything that is not a ``torch.nn.Module`` is its ``repr``.
    """
    if not isinstance(obj, nn.Module):
        return repr(obj)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [n for cls in type(obj).__mro__ if cls.__init__ is not object.__init__
             for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self" and p.kind in named]
    desc: dict[str, Any] = {"type": type(obj).__qualname__}
    for n in dict.fromkeys(names):
        v = obj.__dict__.get(n, ())
        if isinstance(v, _SIMPLE) or (isinstance(v, tuple) and v and all(isinstance(e, _SIMPLE) for e in v)):
            desc[n] = v
    desc.update({n: hyperparameters(child) for n, child in obj.named_children()})
    return desc
