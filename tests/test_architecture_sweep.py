"""No traceback, ever: `inspect --json` and `compress --keep 0.5` over a zoo of tiny random transformers of 27 model
types (encoders, decoders, vision, speech encoders, Whisper's encoder), exported by optimum as a new user would. Each ends in a result
(exit 0) or in one line on stderr with exit 2 that says what is not supported; never in "this is a bug" (exit 1).
The expected outcome per type is the README's architecture table."""

from __future__ import annotations

import json

import pytest
import tiny_zoo

from command_line.app import run_cli

SUPPORTED, REFUSED = 0, 2
COMPRESS = {entry.model_type: SUPPORTED for entry in tiny_zoo.ZOO} | {
    "convbert": REFUSED,  # its span convolutions keep half of each layer: --keep 0.5 is below what heads+ffn reach
    "swin": REFUSED,  # windowed attention: heads are not read through one output projection per layer
    "convnext": REFUSED,  # no attention heads, no FFN between linear layers
}
INSPECT = {entry.model_type: SUPPORTED for entry in tiny_zoo.ZOO}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return tiny_zoo.export_all(tmp_path_factory.mktemp("zoo"))


def run(args: list[str], capfd) -> tuple[int, str, str]:
    code = run_cli(args)
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def assert_outcome(code: int, err: str, expected: int) -> None:
    assert "this is a bug" not in err and "Traceback" not in err, err
    assert code == expected, err
    if code == REFUSED:
        assert err.count("\n") == 1 and err.startswith("error: "), err


def test_the_zoo_spans_at_least_20_types_of_every_kind():
    kinds = {entry.kind for entry in tiny_zoo.ZOO}
    assert len(tiny_zoo.ZOO) >= 20 and kinds == set(tiny_zoo.TASKS)


@pytest.mark.parametrize("model_type", [entry.model_type for entry in tiny_zoo.ZOO])
def test_inspect_and_compress_end_in_a_result_or_one_line(zoo, model_type, capfd):
    path = zoo[model_type]
    code, out, err = run(["inspect", str(path), "--json"], capfd)
    assert_outcome(code, err, INSPECT[model_type])
    if code == SUPPORTED:
        assert json.loads(out)
    code, out, err = run([str(path), "--keep", "0.5", "--calib", str(path.parent / "calib.npz")], capfd)
    assert_outcome(code, err, COMPRESS[model_type])
    if code == SUPPORTED:
        report = json.loads((path.parent / f"{path.stem}.keep0.5.report.json").read_text())
        assert abs(report["keep_achieved"] - 0.5) <= 0.05
