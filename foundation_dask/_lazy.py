"""Any process: the lazy attributes of a package (PEP 562), one implementation for every
package of foundation_dask that loads its heavier names on first use.

>>> __getattr__, __dir__ = attach(__name__, {"Evaluate": "foundation_dask.dspex.evaluate"})
... # doctest: +SKIP
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["attach"]


def attach(package: str, names: Mapping[str, str], submodules: Iterable[str] = ()
           ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``.

    Parameters
    ----------
    package
        The package's ``__name__``.
    names
        Attribute -> module that defines it; imported on first access, then kept as an
        attribute of the package.
    submodules
        Submodules that ``package.name`` imports on first access.

    Returns
    -------
    tuple
        ``(__getattr__, __dir__)``, to assign at the package's top level.
    """
    subs = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        path = names.get(name)
        if path is not None:
            value = getattr(import_module(path), name)
            setattr(sys.modules[package], name, value)
            return value
        if name in subs:
            return import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*getattr(sys.modules[package], "__all__", ()), *names, *subs})

    return __getattr__, __dir__
