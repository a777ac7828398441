"""Machinery shared by the text-based transferable models (VQRec, UniSRec): weight
initialisation, reading a pre-trained checkpoint and copying its transferable tensors (not a
model: files starting with ``_`` are not registered)."""
from __future__ import annotations

import logging
import os
import pickle
import types
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]


class _Unresolved:
    """Stands in for a pickled object whose class cannot be imported here (e.g. the authors'
    ``unisrec.UniSRec`` referenced from the Config a release's checkpoint pickles)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            logger.info("checkpoint references %s.%s, not importable here: kept as a placeholder", module, name)
            return _Unresolved


_TOLERANT_PICKLE = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load, __name__="pickle")


def read_state_dict(path: str) -> StateDict:
    """The tensors of a checkpoint: a RecBole checkpoint (``{"state_dict": ..., "config": ...}``,
    ours or the authors') or a bare state dict.

    A file of tensors only is read with ``weights_only=True``. RecBole checkpoints pickle the whole
    Config, which the safe loader refuses; those are read with ``weights_only=False``, so only
    load checkpoints you trust. Classes such a file names that cannot be imported here (the
    authors' model classes) are read as placeholders: only the tensors are used.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained_file {path!r} does not exist (a checkpoint .pth)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        logger.info("%s holds more than tensors (a RecBole checkpoint): reading it with weights_only=False", path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TOLERANT_PICKLE)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained_file {path!r} holds no state dict of tensors")
    return state


def copy_transferred(
    model: nn.Module,
    state: StateDict,
    prefixes: Iterable[str],
    path: str,
    required: str,
    size_keys: str,
    convert: Optional[Callable[[StateDict], StateDict]] = None,
) -> List[str]:
    """Load the tensors of ``state`` whose names start with one of ``prefixes`` into ``model``.

    ``convert`` first maps another implementation's names and layouts to the model's. Raises
    ValueError naming the tensor when ``required`` is absent or a shape differs (``size_keys``
    names the config keys that fix the shapes). Returns the names of the copied tensors.
    """
    if convert is not None:
        state = convert(state)
    prefixes = tuple(prefixes)
    copied = [key for key in state if key.startswith(prefixes)]
    if required not in copied:
        raise ValueError(f"pretrained_file {path!r} holds no {required!r}: not a checkpoint of this model")
    own = model.state_dict()
    for key in copied:
        if key not in own or own[key].shape != state[key].shape:
            expected = tuple(own[key].shape) if key in own else "no such tensor"
            raise ValueError(
                f"pretrained_file {path!r}: {key} has shape {tuple(state[key].shape)}, this model expects "
                f"{expected}; use the pre-training values of {size_keys}"
            )
    model.load_state_dict({key: state[key] for key in copied}, strict=False)
    logger.info("loaded %d pre-trained tensors from %s", len(copied), path)
    return copied
