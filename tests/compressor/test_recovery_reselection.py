"""Stream refits that choose a layer's units again (`recover(reselect=True)`): the model returned is the one its
masks make, refit; the counts are those given; the choice is made on the pruned model's own activations."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_decoders

from compressor import recovery, scoring
from compressor.fidelity import session
from compressor.pipeline import compress
from graph_passes import apply_masks
from graph_passes.external_data import tensor_array


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_reselected_model_is_the_refit_model_of_its_own_masks(decoder_cache, family, tmp_path):
    """Choosing among all units (the removed ones zeroed in a full-width model) then cutting them out gives the
    model that refitting the sliced model of the chosen masks gives: same counts, same weights' shapes, and outputs
    that differ only by the ridge of the Q, K, V and FFN up refits, chosen on held-out error over every head or
    neuron in the one and over the kept ones in the other (a unit cut at the wrong index would differ by far more)."""
    analysis, masks, data = tiny_decoders.half_pruned(decoder_cache(family)[1], tmp_path)
    indices = list(range(len(data)))
    chosen = recovery.reselectable(analysis, masks)
    assert chosen and all(analysis.group(name).kind in ("heads", "ffn") for name in chosen)
    result = recovery.recover(
        analysis, apply_masks(analysis, masks), masks, data, indices, 8, None, "stream", reselect=True
    )
    assert {name: int(m.sum()) for name, m in result.masks.items()} == {n: int(m.sum()) for n, m in masks.items()}
    assert any(not np.array_equal(result.masks[name], masks[name]) for name in chosen)  # the choice moved
    again = recovery.recover(
        analysis, apply_masks(analysis, result.masks), result.masks, data, indices, 8, None, "stream"
    )
    shapes = [{t.name: list(t.dims) for t in r.model.graph.initializer} for r in (result, again)]
    assert shapes[0] == shapes[1]
    assert result.output_error["refit"] == pytest.approx(again.output_error["refit"], rel=0.05)
    feeds = next(data.batches(indices, len(indices)))
    logits = [session(r.model).run(["logits"], feeds)[0] for r in (result, again)]
    np.testing.assert_allclose(*logits, atol=2e-3)


def test_the_units_chosen_again_depend_on_the_counts_alone(decoder_cache, tmp_path):
    """Which units the masks given keep decides nothing when every pruned group is chosen again: the pipeline then
    skips scoring and hands recovery masks that only carry the counts (with no sliced model: the one compared with
    is the slice of the units chosen)."""
    analysis, masks, data = tiny_decoders.half_pruned(decoder_cache("llama")[1], tmp_path)
    assert set(recovery.reselectable(analysis, masks)) == {name for name, mask in masks.items() if not mask.all()}
    first = {name: np.arange(mask.size) < mask.sum() for name, mask in masks.items()}
    assert any(not np.array_equal(first[name], masks[name]) for name in masks)
    indices = list(range(len(data)))
    results = [
        recovery.recover(analysis, None, m, data, indices, 8, None, "stream", reselect=True) for m in (masks, first)
    ]
    assert all(np.array_equal(results[0].masks[name], results[1].masks[name]) for name in masks)
    weights = [{t.name: tensor_array(t) for t in r.model.graph.initializer} for r in results]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][name], weights[1][name]) for name in weights[0])
    sliced = apply_masks(analysis, results[0].masks)
    assert [list(t.dims) for t in results[0].sliced.graph.initializer] == [
        list(t.dims) for t in sliced.graph.initializer
    ]
    assert results[0].output_error["sliced"] == pytest.approx(results[1].output_error["sliced"])


def test_only_mi_chooses_again_in_the_pipeline(decoder_cache, tmp_path):
    """A decoder's default stream refits choose the units again for `mi`, so its scoring is skipped (nothing is
    captured; the units are chosen by the original stream); a baseline method keeps its own choice."""
    _, path = decoder_cache("llama")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n<|endoftext|>\n".join(tiny_decoders.text(40, seed=9)) + "\n")
    options = {"keep": 0.5, "samples": 24, "max_length": 16, "batch_size": 8}
    for method, moved in (("mi", True), ("magnitude", False)):
        chosen = compress(path, calib, method=method, recover=False, **options).masks
        result = compress(path, calib, method=method, **options)
        assert result.report["recovery"]["inputs"] == "stream"
        kept = {g["name"]: g["kept"] for g in result.report["groups"]}
        assert all(kept[name] == np.flatnonzero(result.masks[name]).tolist() for name in result.masks)
        reselected = result.report["recovery"]["reselected"]
        assert bool(reselected) == moved
        assert ("capture" in result.report["seconds"]) != moved
        assert result.report["top_signal"] == ("stream" if moved else None)
        if not reselected:  # the method's own choice
            assert all(np.array_equal(result.masks[name], chosen[name]) for name in chosen)


def test_an_encoders_global_allocation_scores_once_for_the_counts(tiny_folder, monkeypatch):
    """With global allocation and every pruned group chosen again by recovery, scoring runs the one top-down pass
    that moves the counts, and no model is sliced before recovery; the counts are those of `mi`'s own masks."""
    passes = []
    top_down = scoring._top_down
    monkeypatch.setattr(scoring, "_top_down", lambda *given: passes.append(given) or top_down(*given))
    result = compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", keep=0.5)
    assert result.report["allocation"] == "global" and result.report["recovery"]["reselected"]
    assert len(passes) == 1 and "prune" not in result.report["seconds"]
    own = compress(tiny_folder / "model.onnx", tiny_folder / "calib.tsv", keep=0.5, recover=False).masks
    assert len(passes) == 3  # without recovery, mi's masks come from a second pass at the moved counts
    assert {name: int(mask.sum()) for name, mask in result.masks.items()} == {
        name: int(mask.sum()) for name, mask in own.items()
    }
