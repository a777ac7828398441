"""Small helpers shared by the plugin: cache folders and atomic file writes."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

import numpy as np


def cache_dir(config, kind: str) -> Path:
    """Folder for derived artefacts (text embeddings, codes, tokenizers) of one dataset.

    ``cache_dir`` in the config wins; otherwise ``<data_path>/.recbole_llm_cache/<kind>`` beside
    the dataset, or ``<checkpoint_dir>/cache/<dataset>/<kind>`` when the data folder is not
    writable (the ml-100k files inside the recbole wheel, for instance).
    """
    configured = config["cache_dir"] if "cache_dir" in config else None
    if configured:
        folder = Path(configured) / config["dataset"] / kind
    elif os.access(config["data_path"], os.W_OK) and config["dataset"] != "ml-100k":
        folder = Path(config["data_path"]) / ".recbole_llm_cache" / kind
    else:
        folder = Path(config["checkpoint_dir"]) / "cache" / config["dataset"] / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (strings, numbers, lists, dicts)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def _new_temporary_file(path: Path) -> str:
    """Create an empty, unique ``.<name>.<pid>.<random>.tmp`` beside ``path`` with the user's umask."""
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions of any file the user creates (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary_file(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_array(path: Path, array: np.ndarray) -> None:
    """Atomically save a numpy array (``.npy``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(path, write)
