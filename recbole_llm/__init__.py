"""recbole-llm: LLM and text-based sequential recommenders as RecBole models.

The names below load on first use, so ``import recbole_llm`` (or a file conversion through
``recbole_llm.convert``) imports neither RecBole nor torch; the compatibility patches of
:mod:`recbole_llm.compat` are applied where RecBole is first used.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Config": "recbole_llm.config",
    "run_recbole_llm": "recbole_llm.quick_start",
    "objective_function": "recbole_llm.quick_start",
    "load_data_and_model": "recbole_llm.quick_start",
    "get_model": "recbole_llm.registry",
    "get_trainer": "recbole_llm.registry",
    "create_dataset": "recbole_llm.registry",
    "available_models": "recbole_llm.registry",
    "UserError": "recbole_llm.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recbole_llm' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
