"""Installed AI modules as the router sees them: names, job granularity, dependencies.

Names come from the ``dicomnode.modules`` entry points without importing anything,
so ``dicomnode run`` checks its rules at once.  ``level`` and ``depends_on`` need the
module class (and so torch): :func:`module_infos` loads them, in the scheduler's
thread at start-up, never on the receiver's path.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

from dicomnode.config import Settings
from dicomnode.jobs.queue import ModuleInfo
from dicomnode.routing.rules import RuleSet, load_rules

logger = logging.getLogger(__name__)


def installed_modules() -> list[str]:
    """Names of the installed modules (entry points), sorted."""
    from ai.core.registry import available_modules

    return available_modules()


def module_infos(names: Iterable[str]) -> tuple[dict[str, ModuleInfo], dict[str, str]]:
    """Load each module class: (infos of the loadable ones, error text of the broken ones)."""
    from ai.core.registry import get_module

    infos: dict[str, ModuleInfo] = {}
    broken: dict[str, str] = {}
    for name in sorted(set(names)):
        try:
            module = get_module(name)
        except Exception as exc:  # an installed but broken module must not stop the node
            broken[name] = f"{type(exc).__name__}: {exc}"
            continue
        infos[name] = ModuleInfo(name, module.level, tuple(module.depends_on))
    return infos, broken


def load_routing(settings: Settings, *, load_modules: bool = False) -> RuleSet:
    """The rule set of ``settings``, checked against the installed modules.

    With ``load_modules`` (``dicomnode config check``) every routed module is also
    imported, so a module that is installed but cannot load is reported too.

    Raises
    ------
    ConfigError
        A rules file error (file, line, reason) or a rule naming a missing module.
    """
    from dicomnode.errors import ConfigError

    rules = load_rules(settings.routing.rules_file, installed_modules(),
                       [d.name for d in settings.destinations])
    if load_modules:
        _, broken = module_infos(rules.modules)
        for rule in rules.rules:
            for name in rule.modules:
                if name in broken and rule.source != "defaults.toml":
                    raise ConfigError(f"routing rules {rule.source}, line {rule.line}: rule "
                                      f"{rule.name!r}: module {name!r} cannot be loaded: "
                                      f"{broken[name]}")
        rules = without_modules(rules, broken)
    return rules


def without_modules(rules: RuleSet, broken: dict[str, str]) -> RuleSet:
    """``rules`` with the broken modules taken out of every rule (each logged once)."""
    if not broken:
        return rules
    for name, error in sorted(broken.items()):
        logger.error("module %s cannot be loaded, no job will be queued for it: %s", name, error)
    out = [replace(r, modules=tuple(m for m in r.modules if m not in broken),
                   missing_modules=r.missing_modules + tuple(m for m in r.modules if m in broken))
           for r in rules.rules]
    return replace(rules, rules=tuple(out))
