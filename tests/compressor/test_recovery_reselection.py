"""Stream refits that choose a layer's units again (`recover(reselect=True)`): the model returned is the one its
masks make, refit; the counts are those given; the choice is made on the pruned model's own activations."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_decoders

from compressor import recovery
from compressor.fidelity import session
from compressor.pipeline import compress
from graph_passes import apply_masks


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


def test_only_mi_chooses_again_in_the_pipeline(decoder_cache, tmp_path):
    """A decoder's default stream refits choose the units again for `mi`; a baseline method keeps its own choice."""
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
        assert bool(reselected) == (moved and result.report["recovery"]["kept"])
        if not reselected:  # the method's own choice
            assert all(np.array_equal(result.masks[name], chosen[name]) for name in chosen)
