"""SAID stage 1: early stopping on held-out items, length-bucketed batches, resuming, sharding."""
from __future__ import annotations

import multiprocessing
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from recbole_llm.llm import semantic_embedding as stage1
from recbole_llm.stages import Checkpoint

from conftest import LM_SAMPLE_TEXTS  # noqa: E402  (the tiny LM fixture knows their words)

# more items than the sample texts: every pair of sample texts joined (the tiny LM knows the words)
TEXTS = LM_SAMPLE_TEXTS + [f"{a} {b}" for a, b in zip(LM_SAMPLE_TEXTS[1:], LM_SAMPLE_TEXTS[2:])]


def _settings(tiny_lm: str, **overrides) -> stage1.Stage1Settings:
    values = dict(llm=tiny_lm, embedding_size=16, embedding_init="random", soft_tokens=2, projector_hidden=32,
                  prompt="Item", max_text_tokens=16, epochs=4, patience=4, min_delta=0.0, batch_size=5,
                  learning_rate=3e-3, item_emb_learning_rate=3e-2, save_steps=1, eval_items=3, seed=7)
    values.update(overrides)
    return stage1.Stage1Settings(**values)


def _train(settings: stage1.Stage1Settings, checkpoint: Path):
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384))
    return stage1.train_semantic_embeddings(TEXTS, initial, settings, Checkpoint(checkpoint), "cpu",
                                            show_progress=False)


def test_report_carries_the_loss_curve_and_throughput(tiny_lm, tmp_path):
    table, stats = _train(_settings(tiny_lm), tmp_path / "ckpt.pt")
    assert stats["epochs_run"] == 4 and stats["stop_reason"] == "reached said_epochs (4)"
    assert [point["epoch"] for point in stats["curve"]] == [1, 2, 3, 4]
    assert all(point["train_loss"] > 0 and point["held_out_loss"] > 0 and point["items_per_second"] > 0
               for point in stats["curve"])
    assert stats["eval_items"] == 3 and stats["train_items"] == len(TEXTS) - 1 - 3
    held_out = [point["held_out_loss"] for point in stats["curve"]]
    assert stats["loss_after"] == min([stats["loss_before"]] + held_out)
    assert stats["curve"][-1]["train_loss"] < stats["curve"][0]["train_loss"]


def test_stops_when_the_held_out_loss_stops_falling_and_keeps_the_best_table(tiny_lm, tmp_path, monkeypatch):
    scripted = iter([9.0, 8.0, 7.0, 7.5, 7.2, 1.0])  # before, then after epochs 1..5: best after epoch 2
    real_evaluate = stage1.evaluate_reconstruction

    def scripted_evaluate(objective, item_ids, batch_size):
        real_evaluate(objective, item_ids, batch_size)
        return next(scripted)

    monkeypatch.setattr(stage1, "evaluate_reconstruction", scripted_evaluate)
    table, stats = _train(_settings(tiny_lm, epochs=10, patience=2, min_delta=0.1), tmp_path / "a.pt")
    assert stats["epochs_run"] == 4 < 10
    assert stats["stop_reason"].startswith("held-out loss did not improve by 0.1 for 2 epochs")
    assert stats["best_epoch"] == 2 and stats["loss_after"] == 7.0
    monkeypatch.setattr(stage1, "evaluate_reconstruction", real_evaluate)
    two_epochs, _ = _train(_settings(tiny_lm, epochs=2, patience=2, min_delta=0.1), tmp_path / "b.pt")
    np.testing.assert_array_equal(table, two_epochs)  # the table of the best epoch, not the last


def test_a_flat_held_out_loss_stops_after_patience_epochs_with_the_initial_table(tiny_lm, tmp_path):
    settings = _settings(tiny_lm, epochs=10, patience=2, min_delta=0.5, learning_rate=1e-9, item_emb_learning_rate=1e-9)
    table, stats = _train(settings, tmp_path / "ckpt.pt")
    assert stats["epochs_run"] == 2 and stats["best_epoch"] == 0
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384)).numpy()
    np.testing.assert_array_equal(table, initial)


class _InterruptedCheckpoint(Checkpoint):
    """A checkpoint whose ``after``-th save succeeds and then stops training."""

    def __init__(self, path: Path, after: int):
        super().__init__(path)
        self.saves, self.after = 0, after

    def save(self, state) -> None:
        super().save(state)
        self.saves += 1
        if self.saves == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("interrupt_after", [2, 3, 5])  # mid-epoch 1, end of epoch 1, mid-epoch 2
def test_resumes_mid_epoch_and_across_epochs(tiny_lm, tmp_path, interrupt_after):
    settings = _settings(tiny_lm, epochs=3)
    straight, straight_stats = _train(settings, tmp_path / "straight.pt")
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384))
    with pytest.raises(KeyboardInterrupt):
        stage1.train_semantic_embeddings(TEXTS, initial, settings, _InterruptedCheckpoint(tmp_path / "r.pt", interrupt_after),
                                         "cpu", show_progress=False)
    resumed, resumed_stats = _train(settings, tmp_path / "r.pt")
    np.testing.assert_allclose(resumed, straight, rtol=1e-5, atol=1e-6)
    for a, b in zip(resumed_stats["curve"], straight_stats["curve"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["held_out_loss"] == pytest.approx(b["held_out_loss"], rel=1e-5)


def test_batches_cover_every_item_once_sorted_by_length_with_held_out_apart():
    lengths = torch.tensor([0] + [((7 * i) % 13) + 1 for i in range(1, 60)])
    train, held_out = stage1.split_held_out(60, eval_items=9, seed=3)
    assert len(held_out) == 9 and not set(train.tolist()) & set(held_out.tolist())
    batches = stage1.epoch_batches(train, held_out, lengths, batch_size=4, seed=11)
    seen = torch.cat([batch for batch, _ in batches]).tolist()
    assert sorted(seen) == list(range(1, 60))
    for batch, is_held_out in batches:
        assert set(batch.tolist()) <= set((held_out if is_held_out else train).tolist())
        assert torch.all(lengths[batch][1:] >= lengths[batch][:-1])  # a batch pads to its own longest text
    reshuffled = stage1.epoch_batches(train, held_out, lengths, batch_size=4, seed=12)
    assert [batch.tolist() for batch, _ in batches] != [batch.tolist() for batch, _ in reshuffled]
    assert stage1.split_held_out(10, eval_items=256, seed=3)[1].numel() == 2  # at most a quarter held out


def test_padding_to_the_batch_does_not_change_the_loss(tiny_lm):
    settings = _settings(tiny_lm)
    lm, tokenizer = stage1.load_causal_lm(tiny_lm)
    torch.manual_seed(0)
    initial = stage1.initial_item_table(settings, torch.zeros(len(TEXTS), 384))
    projector = stage1.SoftTokenProjector(initial, 32, 2, lm.get_input_embeddings().weight.shape[1])
    targets = stage1.TextTargets(TEXTS, tokenizer, settings.max_text_tokens)
    objective = stage1.ReconstructionObjective(lm, tokenizer, projector, targets, "Item", autocast=True)
    assert objective.autocast is False  # bf16 autocast is for CUDA only
    batch = torch.tensor([1, 9, 4, 12])
    together, tokens = objective.summed_loss(batch)
    alone = [objective.summed_loss(batch[i : i + 1]) for i in range(len(batch))]
    assert tokens == sum(count for _, count in alone) == int(targets.lengths[batch].sum())
    assert float(together.detach()) == pytest.approx(sum(float(loss.detach()) for loss, _ in alone), rel=1e-5)


# ------------------------------------------------------------------------- two processes

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, port: int, settings: stage1.Stage1Settings, folder: str, queue) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        table, stats = _train(settings, Path(folder) / "ckpt.pt")
        queue.put((rank, table, stats))
    finally:
        torch.distributed.destroy_process_group()


def _two_ranks(settings: stage1.Stage1Settings, folder: Path):
    context = multiprocessing.get_context("spawn")
    queue = context.SimpleQueue()
    port = _free_port()
    ranks = [context.Process(target=_rank_main, args=(rank, port, settings, str(folder), queue)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    results = {}
    for _ in ranks:
        rank, table, stats = queue.get()
        results[rank] = (table, stats)
    for process in ranks:
        process.join(timeout=300)
    assert all(process.exitcode == 0 for process in ranks)
    return results


def test_two_processes_learn_the_same_table_as_one(tiny_lm, tmp_path):
    """Batches of 5 split 3/2 over the ranks, a last batch of 1 leaves rank 1 idle, and the
    held-out batches train embeddings only: all give one process's table up to float rounding.

    Two epochs (8 optimizer steps): Adam turns rounding-level gradient differences on near-zero
    coordinates into whole steps, so over many epochs the two runs drift apart (1e-3 after a third
    epoch of this deliberately sharp random LM) without either being wrong."""
    settings = _settings(tiny_lm, epochs=2)
    single, single_stats = _train(settings, tmp_path / "single.pt")
    results = _two_ranks(settings, tmp_path / "sharded")
    (table0, stats0), (table1, _) = results[0], results[1]
    np.testing.assert_array_equal(table0, table1)
    np.testing.assert_allclose(table0, single, rtol=1e-4, atol=1e-5)
    assert stats0["processes"] == 2
    for sharded, one in zip(stats0["curve"], single_stats["curve"]):
        assert sharded["held_out_loss"] == pytest.approx(one["held_out_loss"], rel=1e-4)
        assert sharded["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)


# ----------------------------------------------------------------------- ablation benchmark

def test_ablation_benchmark_runs_on_a_slice(tiny_config, tiny_lm, tmp_path):
    import importlib.util
    import json

    import yaml

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("said_ablation", REPO_ROOT / "benchmarks" / "said_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    config_file = tmp_path / "slice.yaml"
    config_file.write_text(yaml.safe_dump({key: tiny_config[key] for key in ("load_col", "text_fields")}))
    sizes = {key: tiny_config[key] for key in ("hidden_size", "inner_size", "n_layers", "n_heads", "train_batch_size")}
    tiny = [f"{key}={value}" for key, value in sizes.items()] + [f"cache_dir={tmp_path / 'cache'}", "state=ERROR"]
    said = tiny + [f"said_llm={tiny_lm}", "said_embedding_init=random", "said_embedding_size=16",
                   "said_projector_hidden=16", "said_max_text_tokens=6", "said_batch_size=64", "said_eval_items=16"]
    out = tmp_path / "results"
    ablation.main(["--dataset", tiny_config["dataset"], "--data_root", tiny_config["data_path"],
                   "--config_files", str(config_file), "--users", "60", "--epochs", "1",
                   "--settings", "one-pass", "converged, 1 soft token", "--converged_epochs", "3", "--set", *said, "--sasrec_set", *tiny,
                   "--out", str(out), "--name", "ablation"])
    payload = json.loads((out / "ablation.json").read_text())
    assert [row["setting"] for row in payload["rows"]] == ["one-pass", "converged, 1 soft token", "SASRec"]
    assert payload["dataset"] == f"{tiny_config['dataset']}-u60"
    one_pass, converged = (row["preparation"]["said_stage1"] for row in payload["rows"][:2])
    assert one_pass["epochs_run"] == 1 and len(one_pass["curve"]) == 1
    assert converged["settings"]["soft_tokens"] == 1 and 1 <= converged["epochs_run"] <= 3
    assert len(converged["curve"]) == converged["epochs_run"]
    table = (out / "ablation.md").read_text()
    assert "converged, 1 soft token" in table and "N@10 vs SASRec" in table
    assert (out / "ablation_stage1.png").read_bytes()[:4] == b"\x89PNG"
