"""Bad input, as a table (`bad_input_cases.py`) and as properties: exit code 2, one line on stderr, no traceback,
every input byte-identical and nothing written. Runs the CLI in-process through `run_cli`, the function the console
entry point calls; `test_cli.py` runs the real entry point."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import bad_input_cases
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from command_line.app import run_cli
from compressor.calibration import load_calibration
from graph_passes import load_model
from user_errors import UserError

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json")


@pytest.fixture(scope="module")
def workspace(tiny_folder, tmp_path_factory) -> Path:
    """{m}: a model folder (model, tokenizer, calib.tsv); {t}: a scratch folder beside it, emptied per case."""
    root = tmp_path_factory.mktemp("bad-input")
    (root / "m").mkdir()
    for name in ("model.onnx", "calib.tsv", *TOKENIZER_FILES):
        if (tiny_folder / name).exists():
            shutil.copy(tiny_folder / name, root / "m" / name)
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, err: str, says: str | None = None) -> None:
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    if says is not None:
        assert says in err, err


@pytest.mark.parametrize("case", bad_input_cases.CASES, ids=[c.id for c in bad_input_cases.CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(workspace, case, capsys):
    scratch = workspace / "t"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    if case.make is not None:
        case.make(scratch)
    fill = {"m": str(workspace / "m"), "t": str(scratch)}
    before = snapshot(workspace)
    code, _, err = run([a.format(**fill) for a in case.args], capsys)
    assert_refused(code, err, case.says.format(**fill))
    assert snapshot(workspace) == before


def test_the_table_has_at_least_30_cases_and_readme_shows_it():
    assert len(bad_input_cases.CASES) >= 30
    assert len({c.id for c in bad_input_cases.CASES}) == len(bad_input_cases.CASES)
    readme = bad_input_cases.README.read_text()
    assert bad_input_cases.readme_section(readme) == bad_input_cases.render(), (
        "README's bad-input table is stale: run python tests/compressor/bad_input_cases.py"
    )


def test_a_bug_is_one_line_that_says_so_and_the_traceback_only_with_debug(workspace, capsys, monkeypatch):
    import command_line.app

    def broken(*args, **kwargs):
        raise KeyError("")

    monkeypatch.setattr(command_line.app, "analyze", broken)
    code, _, err = run(["inspect", str(workspace / "m" / "model.onnx")], capsys)
    assert code == 1 and err.count("\n") == 1 and "this is a bug in mi-compressor (KeyError" in err
    assert "--debug" in err and "Traceback" not in err
    code = run_cli(["inspect", str(workspace / "m" / "model.onnx")], debug=True)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: this is a bug")


def test_an_os_error_while_writing_is_one_line(workspace, capsys, monkeypatch, tmp_path):
    import command_line.app

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "b.json"))

    monkeypatch.setattr(command_line.app, "write_atomic", full_disk)
    monkeypatch.setattr(command_line.app, "run_bench", lambda *a, **k: None)
    monkeypatch.setattr(command_line.app, "print_table", lambda result: None)
    monkeypatch.setattr(command_line.app, "as_json", lambda result: "{}")
    code, _, err = run(["bench", str(workspace / "m" / "model.onnx"), "--json", str(tmp_path / "b.json")], capsys)
    assert_refused(code, err, f"cannot use {tmp_path / 'b.json'}: No space left on device; free some disk space")


def test_an_empty_error_message_still_gives_a_line():
    assert str(UserError("")) == "UserError"
    assert str(UserError("first\nsecond")) == "first"


NUMBER_OPTIONS = {
    "--samples": (RUN := ["{m}/model.onnx", "--keep", "0.5"], 1),
    "--batch-size": (RUN, 1),
    "--max-length": (RUN, 8),
    "--seed": (RUN, 0),
    "--runs": (["bench", "{m}/model.onnx"], 1),
    "--warmup": (["bench", "{m}/model.onnx"], 0),
    "--threads": (["bench", "{m}/model.onnx"], 0),
}


def _a_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(sorted(NUMBER_OPTIONS)),
    value=st.one_of(st.integers(max_value=-1), st.text(min_size=1).filter(lambda s: not _a_number(s))),
)
def test_any_number_below_its_range_or_not_a_number_is_refused(workspace, capsys, option, value):
    prefix, lowest = NUMBER_OPTIONS[option]
    value = value if isinstance(value, str) else str(lowest + value)
    if value.startswith("-") and not value.lstrip("-").isdigit():
        value = "x" + value  # a word that starts with '-' reads as an option name, which is a usage error too
    before = snapshot(workspace)
    code, _, err = run([a.format(m=workspace / "m") for a in prefix] + [option, value], capsys)
    assert_refused(code, err, option)
    assert snapshot(workspace) == before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keep=st.one_of(st.floats(max_value=0), st.floats(min_value=1, exclude_min=True), st.just(float("nan"))))
def test_any_keep_outside_0_1_is_refused(workspace, capsys, keep):
    code, _, err = run([str(workspace / "m" / "model.onnx"), "--keep", repr(keep)], capsys)
    assert_refused(code, err, "'--keep'")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_damaged_model_is_read_or_refused_in_one_line(workspace, tmp_path_factory, capsys, data):
    original = (workspace / "m" / "model.onnx").read_bytes()
    cut = data.draw(st.integers(min_value=0, max_value=len(original)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=4))
    damaged = bytearray(original[:cut] if data.draw(st.booleans()) else original)
    for position, byte in flips:
        if position < len(damaged):
            damaged[position] = byte
    path = tmp_path_factory.mktemp("damaged") / "model.onnx"
    path.write_bytes(bytes(damaged))
    code, _, err = run(["inspect", str(path), "--json"], capsys)
    assert code == 0 or (code == 2 and err.count("\n") == 1 and "Traceback" not in err), err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.sampled_from([".tsv", ".csv", ".jsonl", ".npz"]),
    content=st.one_of(
        st.binary(max_size=200),
        st.lists(st.text(alphabet='ab \t,\n"{}:1.-', max_size=20), max_size=6).map(
            lambda rows: "\n".join(rows).encode()
        ),
    ),
)
def test_a_damaged_calibration_file_is_read_or_refused(workspace, tmp_path_factory, suffix, content):
    folder = tmp_path_factory.mktemp("calib")
    path = folder / f"c{suffix}"
    path.write_bytes(content)
    model = _model(workspace)
    try:
        data = load_calibration(path, model, workspace / "m", samples=8)
    except UserError as exc:
        assert str(exc).strip() and "\n" not in str(exc)
        return
    assert len(data) >= 1
    next(data.batches(list(range(len(data))), 8))


_MODELS: dict[Path, object] = {}


def _model(workspace: Path):
    if workspace not in _MODELS:
        _MODELS[workspace] = load_model(workspace / "m" / "model.onnx")
    return _MODELS[workspace]


def test_a_bom_and_crlf_file_reads_as_the_user_sees_it(workspace):
    path = workspace / "bom.tsv"
    path.write_bytes("\ufeffQuality\tsentence\r\n1\tw1 w2\r\n0\tw3\r\n".encode("utf-8"))
    data = load_calibration(path, _model(workspace), workspace / "m", label_column="Quality")
    assert data.texts == [("w1 w2",), ("w3",)] and data.labels.tolist() == [1, 0]
    path.write_bytes("sentence\tlabel\nw1 w2\t1\n".encode("utf-16"))
    assert load_calibration(path, _model(workspace), workspace / "m").texts == [("w1 w2",)]
    path.unlink()


def test_integer_labels_outside_class_ids_are_scores(workspace):
    path = workspace / "scores.tsv"
    path.write_text("sentence\tlabel\nw1\t-1\nw2\t1\n")
    data = load_calibration(path, _model(workspace), workspace / "m")
    assert data.label_kind == "score" and data.labels.tolist() == [-1.0, 1.0]
    path.unlink()


def test_quiet_still_prints_the_no_calibration_warning(workspace, capsys, tmp_path):
    code, out, err = run(
        [
            str(workspace / "m" / "model.onnx"),
            "--keep",
            "0.5",
            "--samples",
            "24",
            "--quiet",
            "--out",
            str(tmp_path / "q.onnx"),
        ],
        capsys,
    )
    assert code == 0, err
    assert out == "" and "warning: no calibration data" in err


def test_a_model_folder_is_read_as_its_model_onnx(workspace, capsys):
    code, out, err = run(["inspect", str(workspace / "m"), "--json"], capsys)
    assert code == 0, err
    assert '"groups"' in out


def test_npz_arrays_and_labels_go_through(workspace):
    path = workspace / "ok.npz"
    ids = np.ones((3, 5), dtype=np.int64)
    np.savez(path, input_ids=ids, attention_mask=ids, token_type_ids=0 * ids, label=np.array([0, 1, 0]))
    data = load_calibration(path, _model(workspace), None)
    assert len(data) == 3 and data.labels.tolist() == [0, 1, 0]
    path.unlink()
    buffer = io.BytesIO()
    np.savez(buffer, input_ids=ids, attention_mask=ids, token_type_ids=ids, label=np.array([0.5, np.nan, 1]))
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="'label' must hold finite numbers"):
        load_calibration(path, _model(workspace), None)
    path.unlink()
