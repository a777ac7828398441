"""The stages layer: keys cover every input, damaged caches are recomputed, RNG is isolated."""
import json
import logging
import random

import numpy as np
import pytest
import torch

from recbole_llm import stages


def _counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value, {"note": "computed"}

    return compute, calls


def test_stage_computes_once_then_loads(tmp_path):
    compute, calls = _counting(np.arange(6, dtype=np.float32).reshape(2, 3))
    first = stages.Stage("demo", tmp_path, {"size": 3}).run(compute)
    stage = stages.Stage("demo", tmp_path, {"size": 3})
    second = stage.run(compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    assert stage.report["cached"] is True and stage.report["note"] == "computed"


@pytest.mark.parametrize("change", ["array", "setting", "nested", "file"])
def test_every_input_changes_the_key(tmp_path, change):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00" * 8)
    base = {"table": np.ones(4), "lr": 0.1, "layers": {"n": 2}, "model": stages.path_input(model)}
    base_key = stages.Stage("s", tmp_path, base).key
    changed = dict(base)
    if change == "array":
        changed["table"] = np.array([1.0, 1.0, 1.0, 2.0])
    elif change == "setting":
        changed["lr"] = 0.2
    elif change == "nested":
        changed["layers"] = {"n": 3}
    else:
        (model / "weights.bin").write_bytes(b"\x01" * 8)
    assert stages.Stage("s", tmp_path, changed).key != base_key


def test_tensor_and_array_digest_by_content():
    assert stages.digest(torch.zeros(3)) == stages.digest(np.zeros(3, dtype=np.float32))
    assert stages.digest(np.zeros(3)) != stages.digest(np.zeros(4))
    assert stages.digest(np.zeros(3, dtype=np.float32)) != stages.digest(np.zeros(3, dtype=np.float64))


@pytest.mark.parametrize("damage", ["truncate", "empty", "same_size_garbage", "no_meta"])
def test_damaged_cache_is_recomputed_with_a_warning(tmp_path, caplog, damage):
    value = np.arange(100, dtype=np.int64)
    compute, calls = _counting(value)
    stage = stages.Stage("codes", tmp_path, {"n": 100})
    stage.run(compute)
    path = stage.path("npy")
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "same_size_garbage":
        path.write_bytes(raw[:-80] + bytes(80))
    else:
        stage.meta_path.unlink()
    with caplog.at_level(logging.WARNING, logger="recbole_llm.stages"):
        again = stages.Stage("codes", tmp_path, {"n": 100}).run(compute)
    assert len(calls) == 2
    np.testing.assert_array_equal(again, value)
    assert str(path) in caplog.text


def test_cache_hit_and_miss_leave_the_same_random_state(tmp_path):
    def compute():
        random.random(), np.random.rand(), torch.rand(1)
        return np.zeros(2)

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    stages.Stage("rng", tmp_path, {}).run(compute)  # miss
    after_miss = draws()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    stages.Stage("rng", tmp_path, {}).run(compute)  # hit
    assert draws() == after_miss


def test_collect_reports_lists_every_stage(tmp_path):
    with stages.collect_reports() as reports:
        stages.Stage("a", tmp_path, {}).run(lambda: np.zeros(1))
        stages.Stage("b", tmp_path, {}).run(lambda: ({"x": 1}, {"items": 5}), kind="json")
    assert [r["stage"] for r in reports] == ["a", "b"]
    assert reports[1]["items"] == 5 and reports[1]["cached"] is False


def test_torch_and_json_kinds_round_trip(tmp_path):
    state = {"w": torch.arange(3.0)}
    stages.Stage("t", tmp_path, {}).run(lambda: state, kind="torch")
    loaded = stages.Stage("t", tmp_path, {}).run(lambda: None, kind="torch")
    assert torch.equal(loaded["w"], state["w"])
    meta = json.loads(stages.Stage("t", tmp_path, {}).meta_path.read_text())
    assert meta["kind"] == "torch" and len(meta["sha256"]) == 64


def test_checkpoint_round_trip_and_damaged_checkpoint_is_ignored(tmp_path):
    checkpoint = stages.Stage("train", tmp_path, {}).checkpoint
    assert checkpoint.load() is None
    checkpoint.save({"epoch": 3})
    assert checkpoint.load() == {"epoch": 3}
    checkpoint.path.write_bytes(b"garbage")
    assert checkpoint.load() is None


def test_successful_run_removes_the_checkpoint(tmp_path):
    stage = stages.Stage("train", tmp_path, {})
    stage.checkpoint.save({"epoch": 1})
    stage.run(lambda: np.zeros(1))
    assert not stage.checkpoint.path.exists()


def test_bad_kind_and_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        stages.Stage("x", tmp_path, {}).run(lambda: 1, kind="pickle")
    with pytest.raises(ValueError, match="name"):
        stages.Stage("../x", tmp_path, {})
