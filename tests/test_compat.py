"""One test per compatibility patch in recbole_llm.compat."""
from __future__ import annotations

import pickle
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import recbole.trainer.trainer as recbole_trainer_module
from recbole_llm import Config, compat, run_recbole_llm


def test_numpy_aliases_restored_when_missing(monkeypatch):
    for alias in ("float_", "complex_", "unicode_", "bool8"):
        if alias in np.__dict__:
            monkeypatch.delitem(np.__dict__, alias)
    assert compat.patch_numpy_aliases() is True
    assert np.float_ is np.float64 and np.complex_ is np.complex128 and np.bool8 is np.bool_
    assert compat.patch_numpy_aliases() is False  # no-op once present
    # RecBole's Config.compatibility_settings reads np.float_ & co.
    Config(model="SASRec", dataset="ml-100k")


class _NotAWeight:
    def __init__(self, value):
        self.value = value


def test_trainer_torch_load_unpickles_full_checkpoints(tmp_path):
    file = tmp_path / "ckpt.pth"
    torch.save({"config": _NotAWeight(3), "state_dict": {}}, file)
    if compat._torch_load_accepts_weights_only():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(file, weights_only=True)
    loaded = recbole_trainer_module.torch.load(file, map_location="cpu")
    assert loaded["config"].value == 3
    assert recbole_trainer_module.torch.nn is torch.nn  # everything else is plain torch


def test_best_checkpoint_reload_in_training(tiny_config):
    result = run_recbole_llm(model="SASRec", dataset=tiny_config["dataset"], config_dict=tiny_config, saved=True)
    assert result["saved_model_file"] and result["test_result"]["ndcg@10"] >= 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cpu_distributed_uses_gloo_and_valid_ddp():
    port = _free_port()
    config = Config(
        model="SASRec",
        dataset="ml-100k",
        config_dict={"local_rank": 0, "world_size": 1, "nproc": 1, "ip": "127.0.0.1", "port": port, "offset": 0},
    )
    try:
        assert torch.distributed.get_backend() == "gloo"
        assert config["device"].type == "cpu" and config["single_spec"] is False
        model = torch.nn.Linear(3, 1)
        ddp = recbole_trainer_module.DistributedDataParallel(model, device_ids=[config["local_rank"]])
        assert ddp.device_ids is None
        ddp(torch.ones(2, 3)).sum().backward()
        assert model.weight.grad is not None
    finally:
        torch.distributed.destroy_process_group()


def test_patches_are_idempotent():
    assert compat.patch_checkpoint_loading() is False
    assert compat.patch_cpu_ddp() is False


def test_pandas_3_is_refused(monkeypatch):
    import pandas

    monkeypatch.setattr(pandas, "__version__", "3.0.0")
    with pytest.raises(ImportError, match="pandas<3"):
        compat.check_pandas()


def test_hyperopt_generator_patch(monkeypatch):
    import recbole.trainer.hyper_tuning as tuning_module

    monkeypatch.setattr(tuning_module, "np", np)
    assert compat.patch_hyperopt_generator(force=True) is True
    rng = tuning_module.np.random.RandomState(7)
    assert hasattr(rng, "integers")  # what hyperopt >= 0.2.7 calls
    assert tuning_module.np.zeros(2).tolist() == [0.0, 0.0]
    assert compat.patch_hyperopt_generator(force=True) is False
    monkeypatch.setattr(compat, "_hyperopt_wants_generator", lambda: False)
    monkeypatch.setattr(tuning_module, "np", np)
    assert compat.patch_hyperopt_generator() is False and tuning_module.np is np


def _anomaly_mode_after(code: str) -> bool:
    result = subprocess.run([sys.executable, "-c", f"import torch\n{code}\nprint(torch.is_anomaly_enabled())"],
                            capture_output=True, text=True, check=True)
    return result.stdout.strip().splitlines()[-1] == "True"


def test_recbole_sequential_models_leave_autograd_anomaly_mode_off():
    # RecBole alone: importing its sequential models (SINE) turns anomaly detection on globally
    assert _anomaly_mode_after("import recbole.model.sequential_recommender")
    assert not _anomaly_mode_after("import recbole_llm.registry\nfrom recbole.utils import get_model\nget_model('SINE')")
    # a user who turned it on before recbole_llm patched RecBole keeps it
    assert _anomaly_mode_after("torch.autograd.set_detect_anomaly(True)\nimport recbole_llm.registry")


def _stderr_of(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr


def test_faiss_fallback_lines_are_silenced_and_its_warnings_kept():
    # RecBole's logger shows INFO; faiss then logs each instruction-set build it fails to load
    show_info = "import logging\nlogging.basicConfig(level=logging.INFO)\n"
    warn = "\nlogging.getLogger('faiss.loader').warning('Could not load library with a real problem')"
    assert "Loading faiss" in _stderr_of(show_info + "import faiss")
    quiet = _stderr_of(show_info + "import recbole_llm.config\nimport faiss" + warn)
    assert "Loading faiss" not in quiet and "Could not load library with AVX" not in quiet
    assert "a real problem" in quiet  # WARNING records still show


def test_grad_scaler_deprecation_is_silenced_and_other_warnings_kept():
    # in a fresh interpreter: pytest installs its own warning filters in front of the patch's
    code = ("import warnings\nwarnings.simplefilter('always')\nimport torch\nimport recbole_llm.config\n"
            "torch.cuda.amp.GradScaler(enabled=False)\nwarnings.warn('a real deprecation', FutureWarning)")
    assert "GradScaler" in _stderr_of("import warnings\nwarnings.simplefilter('always')\nimport torch\n"
                                      "torch.cuda.amp.GradScaler(enabled=False)")
    stderr = _stderr_of(code)
    assert "GradScaler" not in stderr and "a real deprecation" in stderr


def test_recbole_dataset_pandas_warnings_are_silenced_elsewhere_kept():
    code = ("import warnings\nwarnings.simplefilter('always')\nimport recbole_llm.config\n"
            "import recbole.data.dataset.dataset as d\n"
            "warnings.warn_explicit('chained', FutureWarning, d.__file__, 1, module=d.__name__)\n"
            "warnings.warn('user code', FutureWarning)")
    stderr = _stderr_of(code)
    assert "chained" not in stderr and "user code" in stderr


def test_import_does_not_patch_or_import_recbole():
    code = ("import sys\nimport recbole_llm, recbole_llm.convert, recbole_llm.profiles, recbole_llm.errors\n"
            "assert 'recbole' not in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "from recbole_llm import compat\nassert not compat._applied\n"
            "from recbole_llm import Config\nassert 'recbole' in sys.modules and compat._applied\nprint('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
