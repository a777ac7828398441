"""Subprocess smoke tests of run_recbole_llm.py and run_hyper.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO_ROOT


def _write_config(tmp_path, tiny_config) -> str:
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump({k: v for k, v in tiny_config.items() if k != "dataset"}), encoding="utf-8")
    return str(file)


def _run(args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_cli_trains_and_prints_metrics(tmp_path, tiny_config):
    config_file = _write_config(tmp_path, tiny_config)
    proc = _run(
        [str(REPO_ROOT / "run_recbole_llm.py"), "--model=SASRec", f"--dataset={tiny_config['dataset']}",
         f"--config_files={config_file}", "--state=INFO", "--learning_rate=0.002"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "test result" in log and "ndcg@10" in log
    assert "learning_rate = 0.002" in log  # the --key=value override reached RecBole's Config
    assert "checkpoint: " in log and "load_data_and_model(" in log  # the closing summary
    for noise in ("Could not load library", "GradScaler", "FutureWarning"):
        assert noise not in log


def _assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """One line ``error: ...`` on stderr, exit status 2, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and all(f in line for f in fragments), line


def test_cli_unknown_model_fails_with_the_list(tmp_path):
    proc = _run([str(REPO_ROOT / "run_recbole_llm.py"), "--model=NoSuchModel"], cwd=tmp_path)
    _assert_user_error(proc, "unknown model 'NoSuchModel'", "SASRec", "BERT4Rec", "VQRec")


@pytest.mark.parametrize("args, fragments", [
    (["--model=SASRec", "--dataset=not-converted"], ["dataset folder", "not-converted", "recbole_llm.convert"]),
    (["--model=SASRec", "--config_files=absent.yaml"], ["config file 'absent.yaml' does not exist"]),
    (["--model=SASRec", "--epochs=abc"], ["'epochs'", "expected a number"]),
    (["--model=SASRec", "--nproc=0"], ["nproc must be", "--nproc=1"]),
    (["--model=SASRec", "--profile=cpu", "--topk=[10,5000]"], ["topk", "at most 1682"]),
])
def test_cli_user_errors_are_one_line_with_status_2(tmp_path, args, fragments):
    _assert_user_error(_run([str(REPO_ROOT / "run_recbole_llm.py"), *args], cwd=tmp_path), *fragments)


def test_cli_bug_keeps_its_traceback(tmp_path):
    code = ("import recbole_llm.quick_start as q\n"
            "def boom(**kwargs):\n    raise RuntimeError('a bug')\n"
            "q.run = boom\nfrom recbole_llm.cli import main\nmain(['--model=SASRec'])")
    proc = _run(["-c", code], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: a bug" in proc.stderr


@pytest.mark.parametrize("args, fragments", [
    (["--model=NoSuchModel", "--params_file=p.hyper"], ["unknown model 'NoSuchModel'", "SASRec"]),
    (["--model=SASRec", "--params_file=absent.hyper"], ["'absent.hyper' does not exist"]),
    (["--model=SASRec", "--params_file=bad.hyper"], ["bad.hyper:1", "learning_rate sometimes"]),
])
def test_run_hyper_user_errors_are_one_line_with_status_2(tmp_path, args, fragments):
    (tmp_path / "p.hyper").write_text("learning_rate choice [0.001]\n", encoding="utf-8")
    (tmp_path / "bad.hyper").write_text("learning_rate sometimes [0.001]\n", encoding="utf-8")
    _assert_user_error(_run([str(REPO_ROOT / "run_hyper.py"), *args], cwd=tmp_path), *fragments)


def test_benchmark_user_error_is_one_line_with_status_2(tmp_path):
    proc = _run(["-m", "recbole_llm.benchmark", "--datasets", "NotConverted", "--out", str(tmp_path / "out")],
                cwd=tmp_path)
    _assert_user_error(proc, "NotConverted")


def test_run_hyper_two_trials_write_result_file(tmp_path, tiny_config):
    config_file = _write_config(tmp_path, tiny_config)
    params = tmp_path / "sasrec.hyper"
    params.write_text("learning_rate choice [0.001,0.005]\n", encoding="utf-8")
    output = tmp_path / "sasrec.result"
    proc = _run(
        [str(REPO_ROOT / "run_hyper.py"), "--model=SASRec", f"--dataset={tiny_config['dataset']}",
         f"--config_files={config_file}", f"--params_file={params}", f"--output_file={output}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = output.read_text(encoding="utf-8")
    assert text.count("Valid result:") == 2 and text.count("Test result:") == 2
    assert "learning_rate:0.001" in text and "learning_rate:0.005" in text
    assert "best params:" in proc.stdout


def test_run_hyper_with_ray_two_trials(tmp_path, tiny_config):
    pytest.importorskip("ray.tune")
    config_file = _write_config(tmp_path, tiny_config)
    params = tmp_path / "sasrec.hyper"
    params.write_text("learning_rate choice [0.001,0.005]\n", encoding="utf-8")
    output = tmp_path / "ray.result"
    proc = _run(
        [str(REPO_ROOT / "run_hyper.py"), "--tool=ray", "--model=SASRec", f"--dataset={tiny_config['dataset']}",
         f"--config_files={config_file}", f"--params_file={params}", f"--output_file={output}", "--max_evals=2"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    text = output.read_text(encoding="utf-8")
    assert text.count("'learning_rate'") == 2 and text.count("test_ndcg@10") == 2
    assert "best params:" in proc.stdout
