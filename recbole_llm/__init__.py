"""recbole-llm: LLM and text-based sequential recommenders as RecBole models.

Importing the package applies the compatibility patches in :mod:`recbole_llm.compat`.
"""
from recbole_llm import compat as _compat

_compat.apply()

__version__ = "0.1.0"

from recbole_llm.config import Config  # noqa: E402
from recbole_llm.quick_start import load_data_and_model, objective_function, run_recbole_llm  # noqa: E402
from recbole_llm.registry import available_models, create_dataset, get_model, get_trainer  # noqa: E402

__all__ = [
    "Config",
    "run_recbole_llm",
    "objective_function",
    "load_data_and_model",
    "get_model",
    "get_trainer",
    "create_dataset",
    "available_models",
]
