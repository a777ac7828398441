"""Compatibility patches for RecBole 1.2.1 on a modern stack.

This is the only module that patches RecBole or its dependencies. Every patch checks whether it
is needed and is a no-op otherwise; ``apply()`` runs once, where RecBole is first used (importing
:mod:`recbole_llm.config`, :mod:`recbole_llm.registry` or :mod:`recbole_llm.quick_start`), so a
plain ``import recbole_llm`` or a file conversion never imports or patches RecBole.

Patches
-------
numpy_aliases
    numpy 2 removed ``np.float_``, ``np.complex_``, ``np.unicode_`` and ``np.bool8``.
    RecBole's ``Config.compatibility_settings`` reads the first three (and its metrics then use
    ``np.float``); ray 2.6.3 reads ``np.bool8``. The removed names are restored as aliases.
checkpoint_loading
    torch >= 2.6 loads checkpoints with ``weights_only=True``; RecBole's checkpoints pickle the
    whole Config, so ``Trainer.evaluate(load_best_model=True)`` and ``resume_checkpoint`` fail
    with "Weights only load failed". RecBole's trainer module gets a ``torch`` whose ``load``
    defaults to ``weights_only=False`` (the checkpoints are the user's own files).
cpu_ddp
    RecBole wraps the model in ``DistributedDataParallel(model, device_ids=[local_rank])``,
    which is invalid for a CPU model. The trainer module gets a wrapper that passes
    ``device_ids=None`` when the model's parameters live on the CPU. (The process-group backend
    itself is chosen in :meth:`recbole_llm.config.Config._init_device`: gloo on CPU.)
hyperopt_generator
    hyperopt >= 0.2.7 samples with ``rng.integers`` (a numpy ``Generator``), but RecBole's
    exhaustive search hands it a legacy ``RandomState`` ("'RandomState' object has no attribute
    'integers'"). RecBole's tuning module gets a numpy whose ``random.RandomState(seed)`` is
    ``default_rng(seed)``. The pinned hyperopt 0.2.5 needs no patch.
autograd_anomaly
    RecBole's ``model/sequential_recommender/sine.py`` calls ``torch.autograd.set_detect_anomaly(True)``
    at import, and importing any built-in sequential model (``get_model("SASRec")``) imports it:
    from then on every operation records a Python stack and every backward pass scans for NaNs,
    which made a T5 epoch 1.6x slower (Office, one thread: 152 s against 93 s). The package is
    imported here and anomaly detection switched back off unless it was on before. Turn it on
    after ``import recbole_llm`` to debug.
faiss_loader_noise
    faiss tries its AVX512-SPR, AVX512 and AVX2 builds in turn and logs every miss at INFO
    ("Could not load library with AVX2 support due to: ModuleNotFoundError(...)"); once RecBole's
    logger shows INFO, a clean run prints three lines that read like errors. Those loader
    messages are dropped; the loader's warnings and errors still show.
grad_scaler_warning
    RecBole's trainer builds ``torch.cuda.amp.GradScaler(...)`` every epoch, and torch >= 2.4
    warns that this spelling is deprecated on every run. That one FutureWarning is ignored;
    every other warning still shows.
recbole_pandas_warnings
    RecBole 1.2.1's dataset module calls pandas in ways pandas 2.2+ deprecates (chained
    ``fillna(inplace=True)``, ``Series.agg(len)``): four FutureWarnings per run that a user cannot
    act on (the pandas<3 pin is what keeps that code correct, see ``check_pandas``). FutureWarnings
    raised from ``recbole.data.dataset`` are ignored; the same warnings from any other module
    still show.
"""
from __future__ import annotations

import inspect
import logging
import sys
import types
import warnings
from typing import Dict

import numpy as np
import torch

_NUMPY_REMOVED_ALIASES = {
    "float_": "float64",
    "complex_": "complex128",
    "unicode_": "str_",
    "bool8": "bool_",
}

_applied: Dict[str, bool] = {}


def patch_numpy_aliases() -> bool:
    """Restore the numpy aliases removed in numpy 2. Returns True if anything was added."""
    added = False
    for alias, target in _NUMPY_REMOVED_ALIASES.items():
        if alias not in np.__dict__:
            setattr(np, alias, getattr(np, target))
            added = True
    return added


def _torch_load_accepts_weights_only() -> bool:
    return "weights_only" in inspect.signature(torch.load).parameters


def _torch_with_full_unpickling_load() -> types.ModuleType:
    """A stand-in for the ``torch`` module whose ``load`` defaults to ``weights_only=False``."""

    class _TorchProxy(types.ModuleType):
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def load(*args, **kwargs):
            kwargs.setdefault("weights_only", False)
            return torch.load(*args, **kwargs)

    return _TorchProxy("torch")


def patch_checkpoint_loading() -> bool:
    """Let RecBole's trainer reload its own checkpoints on torch >= 2.6."""
    if not _torch_load_accepts_weights_only():
        return False
    import recbole.trainer.trainer as trainer_module

    if isinstance(trainer_module.torch, types.ModuleType) and trainer_module.torch is not torch:
        return False  # already patched
    trainer_module.torch = _torch_with_full_unpickling_load()
    return True


def _cpu_aware_ddp(ddp_class):
    def make_ddp(module, device_ids=None, **kwargs):
        first_param = next(module.parameters(), None)
        if first_param is not None and first_param.device.type == "cpu":
            device_ids = None
        return ddp_class(module, device_ids=device_ids, **kwargs)

    make_ddp.__wrapped__ = ddp_class
    return make_ddp


def patch_cpu_ddp() -> bool:
    """Make RecBole's trainer build a valid DistributedDataParallel for CPU models."""
    import recbole.trainer.trainer as trainer_module

    if hasattr(trainer_module.DistributedDataParallel, "__wrapped__"):
        return False
    trainer_module.DistributedDataParallel = _cpu_aware_ddp(trainer_module.DistributedDataParallel)
    return True


def _hyperopt_wants_generator() -> bool:
    try:
        from importlib.metadata import version

        parts = version("hyperopt").split(".")
    except Exception:  # hyperopt absent: tuning is unavailable anyway
        return False
    numbers = tuple(int(p) for p in parts[:3] if p.isdigit())
    return numbers >= (0, 2, 7)


def _numpy_with_generator_random_state() -> types.ModuleType:
    class _RandomProxy(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np.random, name)

        @staticmethod
        def RandomState(seed=None):  # noqa: N802 (mirrors numpy's name)
            return np.random.default_rng(seed)

    class _NumpyProxy(types.ModuleType):
        random = _RandomProxy("numpy.random")

        def __getattr__(self, name):
            return getattr(np, name)

    return _NumpyProxy("numpy")


def patch_hyperopt_generator(force: bool = False) -> bool:
    """Give RecBole's exhaustive search the random generator newer hyperopt expects."""
    if not (force or _hyperopt_wants_generator()):
        return False
    import recbole.trainer.hyper_tuning as tuning_module

    if tuning_module.np is not np:
        return False  # already patched
    tuning_module.np = _numpy_with_generator_random_state()
    return True


def disable_recbole_anomaly_detection() -> bool:
    """Undo the process-wide autograd anomaly mode that importing RecBole's SINE turns on."""
    sine = "recbole.model.sequential_recommender.sine"
    enabled_before = torch.is_anomaly_enabled() and sine not in sys.modules
    import recbole.model.sequential_recommender  # noqa: F401  (imports sine.py)

    if torch.is_anomaly_enabled() and not enabled_before:
        torch.autograd.set_detect_anomaly(False)
        return True
    return False


_FAISS_LOADER_MESSAGES = ("Loading faiss", "Successfully loaded faiss", "Could not load library with")


class _FaissLoaderFilter(logging.Filter):
    """Drops faiss's INFO-level messages about which instruction-set build it loads."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and str(record.msg).startswith(_FAISS_LOADER_MESSAGES))


def silence_faiss_loader() -> bool:
    """Hide faiss's instruction-set fallback lines (INFO records of ``faiss.loader``)."""
    logger = logging.getLogger("faiss.loader")
    if any(isinstance(f, _FaissLoaderFilter) for f in logger.filters):
        return False
    logger.addFilter(_FaissLoaderFilter())
    return True


GRAD_SCALER_WARNING = r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated"


def silence_grad_scaler_warning() -> bool:
    """Ignore torch's deprecation warning for the ``torch.cuda.amp.GradScaler`` RecBole builds."""
    if any(f[1] is not None and f[1].pattern == GRAD_SCALER_WARNING for f in warnings.filters):
        return False
    warnings.filterwarnings("ignore", message=GRAD_SCALER_WARNING, category=FutureWarning)
    return True


def silence_recbole_pandas_warnings() -> bool:
    """Ignore the pandas FutureWarnings attributed to RecBole's dataset module."""
    pattern = r"recbole\.data\.dataset"
    if any(f[0] == "ignore" and f[2] is FutureWarning and f[3] is not None and f[3].pattern == pattern
           for f in warnings.filters):
        return False
    warnings.filterwarnings("ignore", category=FutureWarning, module=pattern)
    return True


def check_recbole() -> None:
    """RecBole 1.2.1 is installed with ``--no-deps`` on Python >= 3.12: say so when it is absent."""
    try:
        import recbole  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "recbole-llm needs RecBole 1.2.1, which is not installed. On Python >= 3.12 install it "
            "without its ray pin: pip install --no-deps recbole==1.2.1 (see the README's Install)."
        ) from err


def check_pandas() -> None:
    """RecBole 1.2.1 silently corrupts token_seq fields under pandas 3 (copy-on-write)."""
    import pandas

    major = int(pandas.__version__.split(".")[0])
    if major >= 3:
        raise ImportError(
            f"recbole-llm needs pandas<3 (found {pandas.__version__}): RecBole 1.2.1's "
            "fillna(inplace=True) is a no-op under pandas 3 copy-on-write and token_seq fields "
            "fail with 'Length of values does not match length of index'. "
            "Install with: pip install 'pandas<3'"
        )


def apply() -> Dict[str, bool]:
    """Apply every patch once; returns {patch name: whether it changed anything}."""
    if not _applied:
        check_recbole()
        check_pandas()
        _applied["numpy_aliases"] = patch_numpy_aliases()
        _applied["checkpoint_loading"] = patch_checkpoint_loading()
        _applied["cpu_ddp"] = patch_cpu_ddp()
        _applied["hyperopt_generator"] = patch_hyperopt_generator()
        _applied["autograd_anomaly"] = disable_recbole_anomaly_detection()
        _applied["faiss_loader_noise"] = silence_faiss_loader()
        _applied["grad_scaler_warning"] = silence_grad_scaler_warning()
        _applied["recbole_pandas_warnings"] = silence_recbole_pandas_warnings()
    return dict(_applied)
