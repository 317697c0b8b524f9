"""Name lookup for process and time-sampler builders: unknown names and arguments fail with a close match."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Iterable, Mapping

from distill.errors import DistillError


def unknown_name(kind: str, name: object, known: Iterable[str], what: str | None = None) -> DistillError:
    """``DistillError("unknown process 'flwo'; did you mean 'flow'? known: edm, flow, ...")``."""
    known = sorted(known)
    close = difflib.get_close_matches(str(name), known, n=1)
    hint = f" did you mean '{close[0]}'?" if close else ""
    return DistillError(f"{what or f'unknown {kind}'} '{name}';{hint} known: {', '.join(known)}")


def build(kind: str, table: Mapping[str, Any], name: str, kwargs: Mapping[str, Any]) -> Any:
    """Look ``name`` up in ``table`` and call it with ``kwargs``, checking the argument names first."""
    if name not in table:
        raise unknown_name(kind, name, table)
    factory = table[name]
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in kwargs:
        if key not in allowed and not takes_any:
            raise unknown_name("argument", key, allowed, what=f"{kind} '{name}' has no argument")
    return factory(**kwargs)
