"""The results-table harness: seeds, per-user vectors, the paired test, tables, charts, README."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recbole_llm import benchmark


REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ["epochs=1", "hidden_size=8", "inner_size=16", "n_layers=1", "n_heads=1", "embedding_size=8", "state=ERROR"]


ML1M_USERS, ML1M_MOVIES = 20, 60  # more items than the largest cut-off (50)


def write_ml1m_raw(folder: Path, users: int = ML1M_USERS, movies: int = ML1M_MOVIES) -> None:
    """A small ml-1m release: ``ratings.dat`` and ``movies.dat`` (``::`` separated, latin-1).

    User u rates every movie m with (u + m) % 5 != 0, so each user rates 4 movies in 5 and every
    movie keeps more than 5 users: nothing is lost to the 5-core filter.
    """
    folder.mkdir(parents=True)
    ratings = [f"{u}::{m}::{1 + (u * m) % 5}::{978300000 + 86400 * (m + u % 3)}"
               for u in range(1, users + 1) for m in range(1, movies + 1) if (u + m) % 5]
    (folder / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    titles = ["Usual Suspects, The (1995)", "Amélie (2001)"] + [f"Movie {m} ({1900 + m})" for m in range(3, movies + 1)]
    genres = ["Crime|Thriller", "Comedy|Romance", "Animation|Children's", "Action", "Horror|Sci-Fi", "Drama"]
    movies_lines = [f"{m}::{titles[m - 1]}::{genres[m % len(genres)]}" for m in range(1, movies + 1)]
    (folder / "movies.dat").write_text("\n".join(movies_lines) + "\n", encoding="latin-1")


def test_ml1m_prepared_from_raw_files_and_run_over_seeds(tmp_path):
    """--prepare converts ml-1m's raw files; two models x two seeds give mean, std and the test."""
    shared, data_root, out = tmp_path / "shared", tmp_path / "data", tmp_path / "results"
    write_ml1m_raw(shared / "ml-1m")
    benchmark.main(["--datasets", "ml-1m", "--models", "SASRec", "GRU4Rec", "--seeds", "2", "--jobs", "2",
                    "--threads", "1", "--prepare", "--shared_data", str(shared), "--data_root", str(data_root),
                    "--out", str(out), "--set", *TINY, f"checkpoint_dir={tmp_path / 'saved'}"])
    inter = (data_root / "ml-1m" / "ml-1m.inter").read_text(encoding="utf-8").splitlines()
    assert len(inter) - 1 == sum(1 for u in range(1, ML1M_USERS + 1) for m in range(1, ML1M_MOVIES + 1) if (u + m) % 5)
    items = (data_root / "ml-1m" / "ml-1m.item").read_text(encoding="utf-8")
    assert "The Usual Suspects" in items and "Amélie" in items

    payload = json.loads((out / "ml-1m.json").read_text(encoding="utf-8"))
    assert payload["profile"] == "cpu" and payload["dataset"] == "ml-1m"
    rows = {row["model"]: row for row in payload["rows"]}
    assert list(rows) == ["SASRec", "GRU4Rec"]
    vectors = benchmark.load_per_user(out / "ml-1m.per_user.npz")
    for row in rows.values():
        assert row["seeds"] == [2020, 2021] and [r["seed"] for r in row["per_seed"]] == [2020, 2021]
        for metric in benchmark.METRICS:
            values = [r[metric] for r in row["per_seed"]]
            assert row[metric] == pytest.approx(np.mean(values))
            assert row[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
        for seed_row in row["per_seed"]:
            assert f"--seed={seed_row['seed']}" in seed_row["command"]
            per_user = vectors[(row["model"], seed_row["seed"])]
            assert len(per_user["users"]) == ML1M_USERS and len(set(per_user["users"].tolist())) == ML1M_USERS
            # RecBole rounds the reported metric to 4 decimals; the vector is its per-user form
            assert per_user["ndcg@10"].mean() == pytest.approx(seed_row["ndcg@10"], abs=5e-5)
        assert "--model=" + row["model"] in row["command"] and row["versions"]["recbole"] == "1.2.1"
    significance = rows["GRU4Rec"]["significance"]
    assert significance["test"].startswith("Wilcoxon") and significance["users"] == ML1M_USERS
    recomputed = benchmark.paired_test(vectors, "GRU4Rec", [2020, 2021], "SASRec", [2020, 2021])
    assert significance == recomputed
    ratios = [g["ndcg@10"] / s["ndcg@10"] for g, s in zip(rows["GRU4Rec"]["per_seed"], rows["SASRec"]["per_seed"])
              if s["ndcg@10"]]  # a seed where SASRec scores 0 has no ratio
    assert rows["GRU4Rec"]["vs_reference"]["mean"] == pytest.approx(np.mean(ratios))

    table = (out / "ml-1m.md").read_text(encoding="utf-8")
    assert "### ml-1m, profile `cpu`" in table and "| GRU4Rec | 2 |" in table
    assert f"{rows['SASRec']['ndcg@10']:.4f} ± {rows['SASRec']['ndcg@10_std']:.4f}" in table
    assert "Wilcoxon signed-rank" in table and "Profile `cpu`: hidden_size=64" in table
    for chart in ("ml-1m_vs_sasrec.png", "ml-1m_cost.png"):
        assert (out / chart).stat().st_size > 1000

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\n{benchmark.README_START}\nold\n{benchmark.README_END}\n\n## Tests\n",
                      encoding="utf-8")
    with pytest.raises(SystemExit):
        benchmark.main(["readme", "--results", str(out), "--readme", str(readme), "--check"])
    benchmark.main(["readme", "--results", str(out), "--readme", str(readme)])
    benchmark.main(["readme", "--results", str(out), "--readme", str(readme), "--check"])
    text = readme.read_text(encoding="utf-8")
    assert "old" not in text and text.endswith("## Tests\n") and "results/ml-1m_cost.png" in text
    assert "| SASRec | 2 |" in text


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
        [sys.executable, "-m", "recbole_llm.benchmark", "--datasets", "ml-100k", "--models", "SASRec", "--seeds", "1",
         "--out", str(tmp_path),
         "--set", "epochs=100", f"checkpoint_dir={tmp_path / 'saved'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    tasks = Path(f"/proc/{parent.pid}/task")  # jobs start from worker threads: read every thread's children

    def children_of_parent() -> list:
        found = []
        for task in (tasks.iterdir() if tasks.exists() else []):
            try:
                found += (task / "children").read_text().split()
            except OSError:  # the thread ended meanwhile
                pass
        return found

    deadline = time.time() + 120
    children: list = []
    while not children and time.time() < deadline and parent.poll() is None:
        time.sleep(0.2)
        children = children_of_parent()
    assert children, "the table run never started its job"
    parent.terminate()
    assert parent.wait(timeout=60) != 0
    job = Path(f"/proc/{children[0]}")
    try:
        assert not job.exists() or (job / "stat").read_text().split()[2] == "Z"
    finally:
        if job.exists():
            os.kill(int(children[0]), signal.SIGKILL)


def _seed_row(seed: int, ndcg: float, model: str = "SASRec") -> dict:
    return {"model": model, "dataset": "Office", "seed": seed, "recall@10": 2 * ndcg, "ndcg@10": ndcg,
            "recall@50": 4 * ndcg, "ndcg@50": 1.5 * ndcg, "valid_ndcg@10": ndcg, "epochs": 10 + seed % 3,
            "train_seconds_per_epoch": 5.0 + seed % 2, "test_eval_seconds": 0.5, "setup_seconds": 3.0,
            "wall_seconds": 60.0, "peak_ram_mb": 1000.0, "peak_gpu_mb": None,
            "command": f"python run_recbole_llm.py --model={model} --seed={seed}",
            "versions": {"recbole": "1.2.1", "device": "cpu (2 cores)"}, "benchmark_command": "python -m x"}


def test_aggregate_seeds_reports_mean_and_sample_std_and_keeps_each_seed():
    row = benchmark.aggregate_seeds("SASRec (tiny)", [_seed_row(2021, 0.05), _seed_row(2020, 0.04), _seed_row(2022, 0.06)])
    assert row["model"] == "SASRec (tiny)" and row["seeds"] == [2020, 2021, 2022]
    assert row["ndcg@10"] == pytest.approx(0.05) and row["ndcg@10_std"] == pytest.approx(0.01)
    assert row["recall@10_std"] == pytest.approx(0.02) and row["peak_gpu_mb"] is None
    assert [r["seed"] for r in row["per_seed"]] == [2020, 2021, 2022] and "versions" not in row["per_seed"][0]
    assert row["command"].endswith("--seed=2020")


def test_single_seed_rows_of_earlier_files_read_as_one_seed_without_spread():
    legacy = {k: v for k, v in _seed_row(2020, 0.0487).items() if k != "seed"}
    row = benchmark.migrate_row(legacy)
    assert row["seeds"] == [2020] and row["ndcg@10"] == pytest.approx(0.0487) and row["ndcg@10_std"] is None
    table = benchmark.markdown_table([row], "Office")
    assert "| SASRec | 1 | 0.0974 | 0.0487 |" in table


def test_paired_test_pairs_users_by_token_and_averages_shared_seeds():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    users = np.array([f"u{i}" for i in range(200)])
    base = {s: rng.random(200) * (rng.random(200) < 0.3) for s in (1, 2, 3)}
    ours = {s: np.clip(base[s] + rng.normal(0.05, 0.1, 200), 0, 1) for s in (1, 2)}
    vectors = {("SASRec", s): {"users": users, "ndcg@10": base[s]} for s in base}
    order = rng.permutation(200)  # the model's vectors list the users in another order
    vectors.update({("X", s): {"users": users[order], "ndcg@10": ours[s][order]} for s in ours})
    result = benchmark.paired_test(vectors, "X", [1, 2], "SASRec", [1, 2, 3])
    expected = wilcoxon((ours[1] + ours[2]) / 2, (base[1] + base[2]) / 2).pvalue
    assert result["seeds"] == [1, 2] and result["users"] == 200
    assert result["p_value"] == pytest.approx(expected) and result["p_value"] < 0.05
    assert result["reference_ndcg@10"] == pytest.approx(((base[1] + base[2]) / 2).mean())
    assert benchmark.paired_test(vectors, "X", [4], "SASRec", [1, 2, 3]) is None


def test_table_marks_significance_and_states_the_ratio():
    reference = benchmark.aggregate_seeds("SASRec", [_seed_row(s, 0.05) for s in (1, 2)])
    better = benchmark.aggregate_seeds("VQRec", [_seed_row(1, 0.06, "VQRec"), _seed_row(2, 0.055, "VQRec")])
    better["vs_reference"] = benchmark.relative_to_reference(better, reference)
    assert better["vs_reference"]["mean"] == pytest.approx(1.15)
    better["significance"] = {"p_value": 0.003, "users": 10}
    table = benchmark.markdown_table([reference, better], "Scientific")
    assert "| 1.150 ± 0.071** |" in table and "UniSRec/VQ-Rec pre-split files" in table
    assert "| VQ-Rec paper (pre-trained on 5 domains) | | 0.1211 | 0.0643 |" in table
    better["significance"]["p_value"] = 0.2
    assert "| 1.150 ± 0.071 |" in benchmark.markdown_table([reference, better], "Scientific")


def test_default_models_are_the_baselines_then_the_applicable_plugin_models():
    from recbole_llm.registry import available_models

    models = benchmark.default_models()
    assert models[:3] == ["SASRec", "BERT4Rec", "GRU4Rec"]
    plugin = available_models()["recbole_llm"]
    assert set(models[3:]) == set(plugin) - set(benchmark.NOT_APPLICABLE) and "VQRec" in models
    assert "UniSAR" not in models


def test_seed_list():
    assert benchmark.seed_list(3, 2020, None) == [2020, 2021, 2022]
    assert benchmark.seed_list(3, 2020, [7, 1]) == [7, 1]
    with pytest.raises(ValueError, match="repeats"):
        benchmark.seed_list(3, 2020, [7, 7])
    with pytest.raises(ValueError, match="at least 1"):
        benchmark.seed_list(0, 2020, None)


def test_readme_results_section_is_what_the_json_files_say():
    assert benchmark.update_readme(REPO_ROOT / "README.md", REPO_ROOT / "benchmarks" / "results", check=True), (
        "README.md's results section is stale: run python -m recbole_llm.benchmark readme")
