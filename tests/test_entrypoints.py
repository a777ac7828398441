"""Entry points: explicit argv, user errors, profiles, validation, unique run files, run summary,
and the install commands the README gives."""
from __future__ import annotations

import configparser
import logging
import re
import sys
import threading
from importlib import metadata

import pytest
import torch
import yaml

from conftest import REPO_ROOT
from recbole_llm import cli, quick_start
from recbole_llm.config import Config
from recbole_llm.errors import MissingFileError, UserError
from recbole_llm.quick_start import metrics_table, run_recbole_llm
from recbole_llm.utils import unique_run_file


def _write_config(tmp_path, tiny_config) -> str:
    file = tmp_path / "tiny.yaml"
    file.write_text(yaml.safe_dump({k: v for k, v in tiny_config.items() if k != "dataset"}), encoding="utf-8")
    return str(file)


# --- sys.argv is not an input -------------------------------------------------------------------

def test_config_never_reads_sys_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["prog", "--epochs=7"])
    assert Config(model="SASRec", dataset="ml-100k")["epochs"] != 7
    assert Config(model="SASRec", dataset="ml-100k", argv=["--epochs=7"])["epochs"] == 7


def test_argv_overrides_win_over_config_dict():
    config = Config(model="SASRec", dataset="ml-100k", config_dict={"epochs": 4}, argv=["--epochs=6"])
    assert config["epochs"] == 6


def test_main_trains_the_epochs_its_argv_asks_for(tmp_path, tiny_config):
    config_file = _write_config(tmp_path, tiny_config)  # says epochs: 1
    result = cli.main(["--model=SASRec", f"--dataset={tiny_config['dataset']}", f"--config_files={config_file}",
                       "--epochs=3"])
    assert result["timing"]["epochs"] == 3


def test_main_hands_profile_and_overrides_to_the_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(quick_start, "run", lambda **kwargs: seen.update(kwargs) or {})
    cli.main(["--model=VQRec", "--profile=cpu", "--epochs=3", "--dat=x"])  # no abbreviation of --dataset
    assert seen["profile"] == "cpu" and seen["argv"] == ["--epochs=3", "--dat=x"]
    assert seen["model"] == "VQRec" and seen["dataset"] == "ml-100k"


def test_cli_and_tuning_do_not_import_each_other():
    for module in ("cli", "tuning"):
        source = (REPO_ROOT / "recbole_llm" / f"{module}.py").read_text(encoding="utf-8")
        other = "tuning" if module == "cli" else "cli"
        assert not re.search(rf"^\s*(from recbole_llm(\.| import ){other}\b|import recbole_llm\.{other}\b)",
                             source, flags=re.MULTILINE), module


def test_no_module_swaps_sys_argv():
    offenders = []
    for folder in ("recbole_llm", "benchmarks"):
        for file in (REPO_ROOT / folder).rglob("*.py"):
            if file.name == "semantic_ids.py":  # being moved next to the quick start
                continue
            if re.search(r"sys\.argv\s*=[^=]", file.read_text(encoding="utf-8")):
                offenders.append(str(file.relative_to(REPO_ROOT)))
    assert not offenders


# --- user errors --------------------------------------------------------------------------------

def test_argument_without_value_is_a_user_error():
    with pytest.raises(UserError, match="'--epochs' is not of the form --key=value"):
        Config(model="SASRec", dataset="ml-100k", argv=["--epochs", "3"])


def test_misspelled_key_warns_with_the_closest_known_key(caplog):
    with caplog.at_level(logging.WARNING):
        Config(model="SASRec", dataset="ml-100k", argv=["--hiden_size=16", "--my_own_note=1"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'hiden_size'" in m and "'hidden_size'" in m for m in warnings), warnings
    assert not any("my_own_note" in m for m in warnings)  # nothing close: no guess


def test_wrong_kind_of_value_is_a_user_error():
    with pytest.raises(UserError, match="'epochs'.*expected a number.*'abc'"):
        Config(model="SASRec", dataset="ml-100k", argv=["--epochs=abc"])
    with pytest.raises(UserError, match="'reproducibility'.*True or False"):
        Config(model="SASRec", dataset="ml-100k", config_dict={"reproducibility": "yes please"})


def test_nproc_below_one_is_refused_with_what_to_change(capsys):
    with pytest.raises(UserError, match="nproc must be .* >= 1.*--nproc=1"):
        Config(model="SASRec", dataset="ml-100k", config_dict={"nproc": 0})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model=SASRec", "--nproc=0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: nproc must be")


def test_unknown_model_names_the_class_names_a_user_types():
    with pytest.raises(UserError) as err:
        Config(model="SASRek", dataset="ml-100k")
    message = str(err.value)
    assert "did you mean 'SASRec'" in message
    assert all(name in message for name in ("SASRec", "BERT4Rec", "GRU4Rec", "VQRec", "TIGER"))


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(MissingFileError, match="absent.pth"):
        quick_start.load_data_and_model(str(tmp_path / "absent.pth"))


def test_topk_larger_than_the_item_count_fails_before_training(tiny_config, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(quick_start, "get_trainer", no_training)
    with pytest.raises(UserError, match=r"has \d+ items, fewer than the largest topk 100000: set topk to at most"):
        run_recbole_llm(model="SASRec", dataset=tiny_config["dataset"],
                        config_dict={**tiny_config, "topk": [10, 100000]}, saved=False)


# --- profiles -----------------------------------------------------------------------------------

def test_cpu_profile_fills_only_what_the_user_left_unset(tmp_path):
    assert Config(model="SASRec", dataset="ml-100k", profile="cpu")["inner_size"] == 128
    assert Config(model="SASRec", dataset="ml-100k")["inner_size"] == 256  # default: the yaml
    assert Config(model="SASRec", dataset="ml-100k", profile="cpu", argv=["--inner_size=32"])["inner_size"] == 32
    file = tmp_path / "mine.yaml"
    file.write_text("inner_size: 48\n", encoding="utf-8")
    assert Config(model="SASRec", dataset="ml-100k", profile="cpu", config_file_list=[str(file)])["inner_size"] == 48
    tiger = Config(model="TIGER", dataset="ml-100k", profile="cpu")
    assert tiger["d_model"] == 64 and tiger["epochs"] == 20


def test_unknown_profile_is_a_user_error():
    with pytest.raises(UserError, match="unknown profile 'gpu'.*cpu, default"):
        Config(model="SASRec", dataset="ml-100k", profile="gpu")


def test_benchmark_reads_the_same_profiles():
    from recbole_llm import benchmark, profiles

    assert benchmark.PROFILES is profiles.PROFILES and benchmark.job_overrides is profiles.job_overrides


# --- run files and the summary ------------------------------------------------------------------

def test_run_file_names_never_repeat_within_a_second(tmp_path):
    names = {unique_run_file(str(tmp_path), "SASRec") for _ in range(2000)}
    assert len(names) == 2000


def test_two_runs_started_together_keep_their_own_checkpoints(tiny_config):
    results, errors = {}, []

    def one_run(seed: int) -> None:
        try:
            results[seed] = run_recbole_llm(model="SASRec", dataset=tiny_config["dataset"],
                                            config_dict={**tiny_config, "seed": seed}, saved=True)
        except Exception as err:  # reported below, with the other run's outcome
            errors.append(err)

    threads = [threading.Thread(target=one_run, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    files = {seed: result["saved_model_file"] for seed, result in results.items()}
    assert files[1] != files[2] and results[1]["model_fingerprint"] != results[2]["model_fingerprint"]
    for seed, file in files.items():
        checkpoint = torch.load(file, map_location="cpu", weights_only=False)
        assert checkpoint["config"]["seed"] == seed
        # the weights each run tested (reloaded from its best checkpoint) are those in its own file
        assert quick_start.state_fingerprint(checkpoint["state_dict"]) == results[seed]["model_fingerprint"]


def test_data_parallel_ranks_share_rank_0s_checkpoint(tiny_config):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = quick_start.run(model="SASRec", dataset=tiny_config["dataset"], config_dict=tiny_config, saved=True,
                             nproc=2, ip="127.0.0.1", port=str(port))
    files = [rank["saved_model_file"] for rank in result["rank_results"]]
    assert files[0] == files[1] and torch.load(files[0], map_location="cpu", weights_only=False)["state_dict"]


def test_metrics_table_is_one_row_per_metric():
    table = metrics_table({"recall@10": 0.1, "recall@50": 0.25, "ndcg@10": 0.05, "ndcg@50": 0.08})
    lines = table.splitlines()
    assert lines[0].split() == ["@10", "@50"]
    assert lines[1].split() == ["recall", "0.1000", "0.2500"] and lines[2].split() == ["ndcg", "0.0500", "0.0800"]


def test_run_ends_with_metrics_checkpoint_and_how_to_reload(tiny_config, caplog):
    with caplog.at_level(logging.INFO):
        result = run_recbole_llm(model="SASRec", dataset=tiny_config["dataset"], config_dict=tiny_config)
    summary = next(r.getMessage() for r in caplog.records if "test result:" in r.getMessage())
    assert f"checkpoint: {result['saved_model_file']}" in summary
    assert f"load_data_and_model({result['saved_model_file']!r})" in summary
    assert f"{result['test_result']['ndcg@10']:.4f}" in summary


# --- the install commands -----------------------------------------------------------------------

def _readme_block_after(marker: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index(marker)
    block = re.search(r"```bash\n(.*?)```", readme[start:], flags=re.DOTALL)
    return " ".join(block.group(1).replace("\\\n", " ").split())


def _requirements_on(python_version: str):
    from packaging.requirements import Requirement

    parser = configparser.ConfigParser()
    parser.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    lines = [line.split("#")[0].strip() for line in parser["options"]["install_requires"].splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0"}
    return [r for r in requirements if r.marker is None or r.marker.evaluate(environment)]


def test_ci_installs_exactly_as_the_readme_says():
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    ci_install = ci.split("# --- README: install ---\n")[1].split("# --- end ---")[0].strip()
    assert _readme_block_after("<!-- install: python 3.9-3.11 -->") == ci_install


@pytest.mark.parametrize("python_version", ["3.12", "3.13"])
def test_readme_command_for_newer_pythons_matches_setup_cfg(python_version):
    command = _readme_block_after("<!-- install: python 3.12-3.13 -->")
    pinned = {r.name: r for r in _requirements_on("3.11")}["recbole"]
    assert f"--no-deps recbole{pinned.specifier}" in command and '-e ".[test]"' in command
    provided = {r.name.lower().replace("_", "-") for r in _requirements_on(python_version)}
    assert "recbole" not in provided  # installed with --no-deps: its ray pin has no wheel there
    recbole_needs = {re.split(r"[ (<>=;\[]", r)[0].lower().replace("_", "-") for r in metadata.requires("recbole")
                     if "extra ==" not in r}
    assert recbole_needs - provided == {"ray"}
    python_requires = configparser.ConfigParser()
    python_requires.read(REPO_ROOT / "setup.cfg", encoding="utf-8")
    from packaging.specifiers import SpecifierSet

    assert python_version in SpecifierSet(python_requires["options"]["python_requires"].replace(" ", ""))
