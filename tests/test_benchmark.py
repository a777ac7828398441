"""The results-table harness: one tiny job end to end, in its own process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from recbole_llm import benchmark


def test_benchmark_writes_json_markdown_and_chart(tmp_path, ml100k_slice, monkeypatch):
    data_root = tmp_path / "data"
    name = ml100k_slice["dataset"]
    (data_root / name).mkdir(parents=True)
    for suffix in ("inter", "item"):
        src = f"{ml100k_slice['data_path']}/{name}/{name}.{suffix}"
        (data_root / name / f"{name}.{suffix}").write_text(open(src, encoding="utf-8").read(), encoding="utf-8")
    (data_root / name / f"{name}.yaml").write_text(
        yaml.safe_dump({"load_col": ml100k_slice["load_col"], "text_fields": ml100k_slice["text_fields"]}),
        encoding="utf-8",
    )
    out = tmp_path / "results"
    benchmark.main([
        "--datasets", name, "--models", "SASRec", "--data_root", str(data_root), "--out", str(out), "--variant", "tiny",
        "--set", "epochs=1", "hidden_size=8", "inner_size=16", "n_layers=1", "n_heads=1",
        f"checkpoint_dir={tmp_path / 'saved'}", "state=ERROR",
    ])
    rows = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))["rows"]
    assert len(rows) == 1 and rows[0]["model"] == "SASRec (tiny)"
    assert 0 <= rows[0]["ndcg@10"] <= 1 and rows[0]["epochs"] == 1
    assert "--model=SASRec" in rows[0]["command"] and rows[0]["versions"]["recbole"] == "1.2.1"
    table = (out / f"{name}.md").read_text(encoding="utf-8")
    assert "| SASRec (tiny) |" in table
    assert "Profile `cpu`: hidden_size=64" in table and "TIGER, LETTER: d_model=64" in table
    assert (out / f"{name}.png").stat().st_size > 1000


def test_job_overrides_layer_profile_model_dataset_then_user_values():
    tiger = benchmark.job_overrides("cpu", "TIGER", "Office", {"epochs": 3})
    assert tiger["d_model"] == 64 and tiger["hidden_size"] == 64 and tiger["epochs"] == 3
    assert benchmark.job_overrides("cpu", "TIGER", "Office", {})["epochs"] < benchmark.PROFILES["cpu"]["epochs"]
    assert tiger["MAX_ITEM_LIST_LENGTH"] == 20
    # Scientific's pre-split files hold histories of 50: every model must accept them
    assert benchmark.job_overrides("cpu", "TIGER", "Scientific", {})["MAX_ITEM_LIST_LENGTH"] == 50
    assert benchmark.job_overrides("cpu", "SASRec", "Scientific", {"MAX_ITEM_LIST_LENGTH": 60})["MAX_ITEM_LIST_LENGTH"] == 60
    assert "d_model" not in benchmark.job_overrides("cpu", "SASRec", "Office", {})
    assert benchmark.job_overrides("default", "TIGER", "Office", {}) == {}


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")
def test_terminated_table_run_takes_its_job_down(tmp_path):
    parent = subprocess.Popen(
        [sys.executable, "-m", "recbole_llm.benchmark", "--models", "SASRec", "--out", str(tmp_path),
         "--set", "epochs=100", f"checkpoint_dir={tmp_path / 'saved'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    deadline = time.time() + 120
    children: list = []
    while not children and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
        children = children_file.read_text().split() if children_file.exists() else []
    assert children, "the table run never started its job"
    parent.terminate()
    assert parent.wait(timeout=60) != 0
    job = Path(f"/proc/{children[0]}")
    try:
        assert not job.exists() or (job / "stat").read_text().split()[2] == "Z"
    finally:
        if job.exists():
            os.kill(int(children[0]), signal.SIGKILL)
