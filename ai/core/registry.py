"""Module discovery through the ``dicomnode.modules`` entry-point group.

A module is a class implementing :class:`ai.core.contract.AIModule`, declared as an
entry point (``quality = ai.quality.module:QualityModule`` in ``setup.cfg``), so a
site adds its own module by installing a package that declares one, as pydicom
finds its CLI sub-commands.
"""
from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from ai.core.contract import AIModule

logger = logging.getLogger(__name__)

GROUP = "dicomnode.modules"


class UnknownModuleError(LookupError):
    """No module of that name is installed; the message lists the installed ones."""


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_modules() -> list[str]:
    """Names of the installed modules, sorted."""
    return sorted(_entry_points())


def get_module(name: str) -> AIModule:
    """A new instance of the module called ``name``.

    Raises
    ------
    UnknownModuleError
        ``name`` is not installed (the message names the installed modules).
    TypeError
        The entry point does not name an :class:`AIModule` subclass.
    """
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise UnknownModuleError(f"unknown module {name!r} (installed: {known})")
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, AIModule)):
        raise TypeError(f"entry point {GROUP}:{name} = {eps[name].value} is not an AIModule")
    module = cls()
    if module.name != name:
        # Rules, the index and SRs use the entry-point name; a mismatch would split them.
        raise TypeError(f"entry point {name!r} loads a module named {module.name!r}")
    return module
