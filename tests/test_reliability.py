"""What the converters promise: nothing a user owns is deleted, damaged input gets a clear error.

Every fixture is written by the test itself (tests/convert_fixtures.py); see docs/reliability.md.
"""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_fixtures as fx  # noqa: E402

from recbole_llm.convert import FORMATS, ConversionError, convert  # noqa: E402
from recbole_llm.convert import core  # noqa: E402
from recbole_llm.convert.__main__ import main as cli_main  # noqa: E402
from recbole_llm.utils import atomic_write  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def tree(folder: Path) -> dict:
    """Every file below ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list:
    return sorted(p.name for p in path.parent.iterdir())


# --------------------------------------------------------------------------------------------
# Data loss: refused before anything is read


@pytest.mark.parametrize("where", ["same", "parent", "inside"])
def test_output_is_contains_or_lies_inside_an_input_is_refused(tmp_path, monkeypatch, where):
    monkeypatch.chdir(REPO)  # the test's own folder would be refused as the current folder
    raw = tmp_path / "data" / "raw"
    fx.write_amazon2023(raw)
    (raw / "Toy.jsonl.gz").write_bytes(b"not gzip at all")  # reading it would fail: the guard comes first
    before = tree(tmp_path)
    output = {"same": raw, "parent": raw.parent, "inside": raw / "toy"}[where]
    for inputs in ([raw], [raw / "meta_Toy.jsonl.gz", raw / "Toy.jsonl.gz"]):
        if where == "inside" and inputs != [raw]:
            continue  # a folder holding an input file is not itself an input
        with pytest.raises(ConversionError, match=r"(is|contains|lies inside) the input"):
            convert("amazon2023", inputs, output, overwrite=True)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("output", [".", "..", "HOME", "/", "CWD", "CWD_PARENT"])
def test_dangerous_outputs_are_refused(tmp_path, monkeypatch, output):
    work = tmp_path / "home" / "work"
    fx.write_lcrec(work / "raw")
    (work / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    path = {"HOME": str(tmp_path / "home"), "CWD": str(work), "CWD_PARENT": str(work.parent)}.get(output, output)
    before = tree(tmp_path)
    refused = r"must name a new dataset folder|(is|contains) (the filesystem root|your home folder|the current folder)"
    with pytest.raises(ConversionError, match=refused):
        convert("lcrec", [Path("raw")], path, overwrite=True)
    assert cli_main(["lcrec", "--input", "raw", "--output", path, "--overwrite"]) == 2
    assert tree(tmp_path) == before


def test_overwrite_replaces_only_a_folder_this_converter_wrote(tmp_path):
    inputs = fx.write_lcrec(tmp_path / "raw")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(ConversionError, match="not written by recbole_llm.convert"):
        convert("lcrec", inputs, mine, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    a_file = tmp_path / "file"
    a_file.write_text("data")
    with pytest.raises(ConversionError, match="not written by recbole_llm.convert"):
        convert("lcrec", inputs, a_file, overwrite=True)
    assert a_file.read_text() == "data"

    out = tmp_path / "toy"
    result = convert("lcrec", inputs, out)
    marker = json.loads((out / core.MARKER).read_text())
    assert marker["format"] == "lcrec" and marker["files"] == result.files
    convert("lcrec", inputs, out, overwrite=True)
    convert("lcrec", inputs, out, overwrite=True)
    assert siblings(out) == ["file", "mine", "raw", "toy"]  # no .old-<pid> or partial folder left


def test_an_empty_existing_folder_is_filled(tmp_path):
    out = tmp_path / "toy"
    out.mkdir()
    convert("lcrec", fx.write_lcrec(tmp_path / "raw"), out)
    assert (out / "toy.inter").is_file()


def _write_format(fmt: str, folder: Path) -> list:
    """Inputs for each format (the multi-domain merge reads two converted datasets)."""
    if fmt == "kuaisar":
        return fx.write_kuaisar(folder)
    if fmt == "amazon_search":
        return fx.write_lcrec(folder)
    if fmt == "multi_domain":
        sources = []
        for name in ("DomA", "DomB"):
            sources.append(convert("lcrec", fx.write_lcrec(folder / f"raw{name}"), folder / name).path)
        return sources
    writer = {case_fmt: writer for case_fmt, writer in fx.CASES.values()}[fmt]
    return writer(folder)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_honours_overwrite(tmp_path, fmt, capsys):
    inputs = [str(p) for p in _write_format(fmt, tmp_path / "in")]
    out = tmp_path / "out" / "ds"
    args = [fmt, "--input", *inputs, "--output", str(out)]
    if fmt == "kuaisar":
        args += ["--min-user-events", "1"]
    assert cli_main(args) == 0, capsys.readouterr().err
    (out / "ds.yaml").write_text("edited by the user")
    assert cli_main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "ds.yaml").read_text() == "edited by the user"
    assert cli_main(args + ["--overwrite"]) == 0
    assert (out / "ds.yaml").read_text() != "edited by the user" and (out / core.MARKER).is_file()
    assert siblings(out) == ["ds"]


# --------------------------------------------------------------------------------------------
# The command line: one line and status 2 for user errors, a traceback for bugs


def test_cli_user_errors_print_one_line_and_exit_2(tmp_path):
    for args in (["lcrec", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "out")],
                 ["lcrec", "--input", str(tmp_path), "--output", str(tmp_path), "--overwrite"]):
        done = subprocess.run([sys.executable, "-m", "recbole_llm.convert", *args], cwd=REPO, env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
        assert "Traceback" not in done.stderr


def test_cli_bug_keeps_its_traceback(tmp_path, monkeypatch):
    from recbole_llm.convert import lcrec

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(lcrec, "convert", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli_main(["lcrec", "--input", *map(str, fx.write_lcrec(tmp_path / "raw")), "--output", str(tmp_path / "o")])


# --------------------------------------------------------------------------------------------
# Damaged input


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupt":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + data[middle + 64:])
    else:  # a plain text file named .gz
        path.write_bytes(gzip.decompress(data))


@pytest.mark.parametrize("how", ["truncated", "corrupt", "plain"])
def test_damaged_gzip_names_the_file(tmp_path, how):
    inputs = fx.write_amazon2023(tmp_path / "raw")
    reviews = tmp_path / "raw" / "Toy.jsonl.gz"
    _damage(reviews, how)
    with pytest.raises(ConversionError, match=f"{reviews}: (damaged or truncated gzip|not a gzip)"):
        convert("amazon2023", inputs, tmp_path / "toy")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["README.md", "Toy.jsonl.gz", "meta_Toy.jsonl.gz"]
    assert siblings(tmp_path / "toy") == ["raw"]


SLOW = """
import sys, time, pathlib
from recbole_llm.convert import core, lcrec
from recbole_llm.convert.__main__ import main
module, name = (core, "write_atomic_file") if sys.argv[2] == "write" else (lcrec, "load_json")
work = getattr(module, name)
def slow(*args):
    value = work(*args)
    pathlib.Path(sys.argv[1]).touch()
    time.sleep(120)
    return value
setattr(module, name, slow)
sys.exit(main(sys.argv[3:]))
"""


def _start_slow_conversion(tmp_path: Path, phase: str = "write") -> tuple:
    """A conversion paused while it writes (a partial folder exists) or while it reads."""
    inputs = fx.write_lcrec(tmp_path / "raw")
    (tmp_path / "data").mkdir()
    ready = tmp_path / "ready"
    args = ["lcrec", "--input", str(inputs[0]), "--output", str(tmp_path / "data" / "toy")]
    proc = subprocess.Popen([sys.executable, "-c", SLOW, str(ready), phase, *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    partial = [p.name for p in (tmp_path / "data").iterdir() if p.name.startswith(".toy.partial-")]
    assert len(partial) == (phase == "write")
    return proc, inputs


@pytest.mark.parametrize("phase", ["read", "write"])
def test_sigterm_is_handled_like_ctrl_c(tmp_path, phase):
    proc, _ = _start_slow_conversion(tmp_path, phase)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    assert list((tmp_path / "data").iterdir()) == []


def test_leftovers_of_a_killed_run_are_reported_and_removed(tmp_path):
    proc, inputs = _start_slow_conversion(tmp_path)
    proc.kill()
    proc.wait(timeout=60)
    data = tmp_path / "data"
    (left,) = [p for p in data.iterdir() if p.name.startswith(".toy.partial-")]
    (data / f".toy.old-{proc.pid}").write_text("left by an older release")
    alive = data / f".toy.partial-{os.getpid()}-0badcafe"  # a run still in progress: left alone
    alive.mkdir()
    result = convert("lcrec", inputs, data / "toy")
    assert sum("interrupted conversion" in note for note in result.notes) == 2
    assert str(left) in " ".join(result.notes)
    assert sorted(p.name for p in data.iterdir()) == [alive.name, "toy"]


def test_amazon2023_timestamps_in_seconds_are_detected(tmp_path):
    inputs = fx.write_amazon2023(tmp_path / "raw")
    lines = gzip.decompress(inputs[0].read_bytes()).decode().splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["timestamp"] //= 1000
    inputs[0].write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    result = convert("amazon2023", inputs, tmp_path / "toy")
    assert any("timestamps are in seconds" in note for note in result.notes)
    times = pd.read_csv(tmp_path / "toy" / "toy.inter", sep="\t")["timestamp:float"]
    assert times.min() >= fx.BASE_TIME  # not January 1970

    records[0]["timestamp"] *= 1000
    inputs[0].write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    with pytest.raises(ConversionError, match="mix seconds and milliseconds"):
        convert("amazon2023", inputs, tmp_path / "toy2")


def test_bytes_that_are_not_utf8_are_counted_and_fail_under_strict(tmp_path):
    raw = tmp_path / "raw"
    fx.write_amazon2023(raw)
    meta = gzip.decompress((raw / "meta_Toy.jsonl.gz").read_bytes()).split(b"\n")
    meta[1] = meta[1].replace(b"Lab beaker", b"Lab \xff\xfe beaker")
    (raw / "meta_Toy.jsonl.gz").unlink()
    (raw / "meta_Toy.jsonl").write_bytes(b"\n".join(meta))
    inputs = [raw / "Toy.jsonl.gz", raw / "meta_Toy.jsonl"]
    result = convert("amazon2023", inputs, tmp_path / "toy")
    assert any("1 line(s) held bytes that are not valid utf-8" in note and "line 2" in note for note in result.notes)
    item = pd.read_csv(tmp_path / "toy" / "toy.item", sep="\t", dtype=str)
    assert item["title:token_seq"].str.contains("\ufffd").sum() == 1
    with pytest.raises(ConversionError, match=r"meta_Toy.jsonl, line 2: bytes that are not valid utf-8"):
        convert("amazon2023", inputs, tmp_path / "strict", strict=True)


def test_bytes_that_are_not_utf8_in_a_json_document_name_their_line(tmp_path):
    raw = tmp_path / "raw"
    fx.write_lcrec(raw)
    text = (raw / "Toy.item.json").read_bytes()
    assert text.count(b"Stapler &amp; staples 3") == 1
    (raw / "Toy.item.json").write_bytes(text.replace(b"Stapler &amp; staples 3", b"Stapler \xe9 staples 3"))
    line = text[: text.index(b"Stapler &amp; staples 3")].count(b"\n") + 1
    result = convert("lcrec", [raw], tmp_path / "toy")
    assert any(f"Toy.item.json: 1 line(s) held bytes that are not valid utf-8, replaced by U+FFFD (line {line})" in note
               for note in result.notes)
    with pytest.raises(ConversionError, match=f"Toy.item.json, line {line}: bytes that are not valid utf-8"):
        convert("lcrec", [raw], tmp_path / "strict", strict=True)


def test_rechorus_eval_rows_without_training_history_are_dropped_and_reported(tmp_path):
    raw = tmp_path / "raw"
    inputs = fx.write_rechorus(raw)
    with open(raw / "test.csv", "a", encoding="utf-8") as handle:
        handle.write("99\t3\t1600000000\t[1, 2]\n")
    result = convert("rechorus", inputs, tmp_path / "toy")
    assert any("test.csv: 1 row(s) of users absent from train.csv, dropped" in note for note in result.notes)
    users = pd.read_csv(tmp_path / "toy" / "toy.inter", sep="\t", dtype=str)["user_id:token"]
    assert "99" not in set(users) and result.n_users == fx.N_USERS
    kept = convert("rechorus", inputs, tmp_path / "kept", keep_users_without_train=True)
    assert kept.n_users == fx.N_USERS + 1


# --------------------------------------------------------------------------------------------
# Security: untrusted files


@pytest.mark.parametrize("fmt, nested", [
    ("amazon2018", "{'a': " * 200_000 + "1" + "}" * 200_000),  # Python-literal meta: the parser's limit
    ("amazon2023", '{"a": ' * 200_000 + "1" + "}" * 200_000),  # JSON: the decoder's limit
    ("amazon2023", '{"a": ' * 500 + "1" + "}" * 500),       # parses, but deeper than any record
])
def test_deeply_nested_line_fails_fast(tmp_path, fmt, nested):
    writer = fx.write_amazon2018 if fmt == "amazon2018" else fx.write_amazon2023
    inputs = writer(tmp_path / "raw")
    meta = [p for p in inputs if p.name.startswith("meta_")][0]
    with gzip.open(meta, "at", encoding="utf-8") as handle:
        handle.write(nested + "\n")
    start = time.time()
    with pytest.raises(ConversionError, match=r"meta_Toy.*line \d+: nested deeper"):
        convert(fmt, inputs, tmp_path / "toy")
    assert time.time() - start < 30


def test_huge_single_line_fails_without_reading_it_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(core, "MAX_LINE_CHARS", 1 << 16)
    big = tmp_path / "raw2"
    big.mkdir()
    reviews = big / "Toy.jsonl"
    with open(reviews, "w", encoding="utf-8") as handle:
        handle.write('{"text": "' + "x" * (8 << 20) + '"}\n')
    (big / "meta_Toy.jsonl").write_text("{}\n")
    tracemalloc.start()
    try:
        with pytest.raises(ConversionError, match=r"Toy.jsonl, line 1: longer than 65536 characters"):
            convert("amazon2023", [big], tmp_path / "toy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20  # the 8 MiB line was never held in memory


def test_python_literal_meta_is_never_executed(tmp_path):
    inputs = fx.write_amazon2018(tmp_path / "raw")
    meta = [p for p in inputs if p.name.startswith("meta_")][0]
    flag = tmp_path / "executed"
    with gzip.open(meta, "at", encoding="utf-8") as handle:
        handle.write(f"__import__('pathlib').Path({str(flag)!r}).touch()\n")
        handle.write(f"{{'asin': (lambda: __import__('os').system('touch {flag}'))()}}\n")
    result = convert("amazon2018", inputs, tmp_path / "toy")
    assert not flag.exists()
    assert any("skipped 2 malformed line(s)" in note for note in result.notes)


def test_nothing_is_written_outside_the_output_folder(tmp_path):
    raw = tmp_path / "raw"
    fx.write_lcrec(raw)
    sequences = json.loads((raw / "Toy.inter.json").read_text())
    sequences["../../escaped"] = sequences.pop("0")
    (raw / "Toy.inter.json").write_text(json.dumps(sequences))
    convert("lcrec", [raw], tmp_path / "data" / "toy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "raw"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["toy"]
    folder = core.OutputFolder(tmp_path / "data" / "other", False, "lcrec")
    with folder:
        for suffix in ("/../../x", "../x", ".inter/../../x", ""):
            with pytest.raises(ValueError, match="inside the dataset folder"):
                folder.file(suffix)
        folder.file(".inter").write_text("")


def test_the_multi_domain_merge_does_not_import_the_runner():
    """convert/ is checked by test_architecture; the merge in data/ is a converter too."""
    from test_architecture import RUNNER, _imports

    path = REPO / "recbole_llm" / "data" / "multi_domain.py"
    assert not [name for name in _imports(path) if name in RUNNER]


# --------------------------------------------------------------------------------------------
# File modes


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_honour_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "cache.npy", lambda tmp: Path(tmp).write_bytes(b"x"))
        convert("lcrec", fx.write_lcrec(tmp_path / "raw"), tmp_path / "toy")
    finally:
        os.umask(previous)
    assert (tmp_path / "cache.npy").stat().st_mode & 0o777 == mode
    assert (tmp_path / "toy" / "toy.inter").stat().st_mode & 0o777 == mode
    assert (tmp_path / "toy").stat().st_mode & 0o777 == mode | ((mode & 0o444) >> 2)
    assert siblings(tmp_path / "cache.npy") == ["cache.npy", "raw", "toy"]


def test_a_dataset_converted_before_markers_existed_can_be_overwritten(tmp_path):
    inputs = fx.write_lcrec(tmp_path / "raw")
    out = tmp_path / "toy"
    convert("lcrec", inputs, out)
    (out / core.MARKER).unlink()  # as an earlier release wrote it
    convert("lcrec", inputs, out, overwrite=True)
    assert (out / core.MARKER).is_file()
    (out / core.MARKER).unlink()
    (out / "results.csv").write_text("the user's own file")  # not only the dataset's files: refused
    with pytest.raises(ConversionError, match="not written by recbole_llm.convert"):
        convert("lcrec", inputs, out, overwrite=True)
    (out / "results.csv").unlink()
    (out / "toy.yaml").write_text("# my own settings\nUSER_ID_FIELD: user_id\n")  # not a converted yaml: refused
    with pytest.raises(ConversionError, match="not written by recbole_llm.convert"):
        convert("lcrec", inputs, out, overwrite=True)
