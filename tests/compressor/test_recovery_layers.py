"""Stream refits run each model one layer at a time (`recovery._layer_cuts`): the moments equal those of whole-model
runs from the graph inputs, and no layer's run reads another layer's weights or the embedding."""

from __future__ import annotations

import numpy as np
import pytest
import tiny_decoders

from compressor import recovery
from compressor.batch_store import STORE_BYTES, Spill
from compressor.capture import token_rows
from compressor.fidelity import session
from compressor.statistics import Moments
from graph_passes import apply_masks, normalize


def _setup(decoder_cache, family: str, tmp_path):
    analysis, masks, data = tiny_decoders.half_pruned(decoder_cache(family)[1], tmp_path)
    return analysis, masks, recovery._batches(data, list(range(len(data))), 8)


def _whole_model_moments(analysis, pruned, projection, batches) -> tuple[Moments, Moments]:
    """The stream refit's moments from runs of the whole original and pruned models (what each layer's cut stands
    for)."""
    stream = recovery.residual_stream(analysis.model, analysis.linear(projection.weight).node_index)
    names = [projection.activations[0], stream]
    runs = [session(m, names) for m in (analysis.model, pruned)]
    fit, check = (Moments(len(projection.rows), len(projection.columns)) for _ in range(2))
    for batch in batches:
        before, after = ([token_rows(v, batch.tokens) for v in run.run(names, batch.feeds)] for run in runs)
        target = projection.outputs(before[0]) + before[1][:, projection.columns] - after[1]
        (check if batch.held_out else fit).add(after[0], target)
    return fit, check


@pytest.mark.parametrize(("family", "budget"), [("gpt2", STORE_BYTES), ("llama", STORE_BYTES), ("llama", 0)])
def test_layer_by_layer_moments_equal_whole_model_runs(decoder_cache, family, budget, tmp_path):
    """Also with every batch kept in files (a budget of 0 bytes): what is read back is what was kept."""
    analysis, masks, batches = _setup(decoder_cache, family, tmp_path)
    pruned = normalize(apply_masks(analysis, masks))
    found = recovery.projections(analysis, masks)
    spill = Spill(tmp_path, budget)
    got = list(recovery._compensated_moments(analysis, pruned, found, batches, spill))  # the sliced model: no refit
    assert spill.held == 0 and not list(tmp_path.glob("mi-compressor-batches-*/*"))  # released as the pass ends
    assert len(got) == len(found) == 4
    for projection, moments in zip(found, got):
        for have, want in zip(moments, _whole_model_moments(analysis, pruned, projection, batches)):
            assert have.count == want.count > 0
            np.testing.assert_allclose(have.gram, want.gram, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(have.cross, want.cross, rtol=1e-5, atol=1e-4)
            assert have.partner_squares == pytest.approx(want.partner_squares, rel=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_run_past_the_first_computes_its_own_part_only(decoder_cache, family, tmp_path, monkeypatch):
    """Past the first, the original runs a layer at a time, and the pruned model from one run of projections' inputs
    to the next's: no weight is computed twice, and neither the embedding nor the head once fed with a cut."""
    analysis, masks, batches = _setup(decoder_cache, family, tmp_path)
    owner = {w: g.layer for g in analysis.groups if g.kind in ("heads", "ffn") for w in (*g.readers, *g.writers)}
    made = []
    truncated = recovery.truncated
    monkeypatch.setattr(recovery, "truncated", lambda *given: made.append((given[0], truncated(*given))) or made[-1][1])
    found = recovery.projections(analysis, masks)
    for _ in recovery._compensated_moments(analysis, normalize(apply_masks(analysis, masks)), found, batches, Spill()):
        pass
    declared = len(analysis.model.graph.input)
    cut = [(source, m) for source, m in made if len(m.graph.input) > declared]  # fed with a cut
    original = [m for source, m in cut if source is analysis.model]
    pruned = [m for source, m in cut if source is not analysis.model]
    assert len(original) == 1 and len(pruned) == 2  # layer 1's pass; from FFN down's input to attention's, to FFN's
    reads = [{t.name for t in m.graph.initializer if len(t.dims) == 2} for m in original + pruned]
    assert all(matrices and matrices <= set(owner) for matrices in reads)  # neither the embedding nor the head
    assert {owner[name] for name in reads[0]} == {1}
    assert not reads[1] & reads[2]


def test_stream_refits_run_a_shared_weights_model_and_leave_its_projections_as_sliced(family_cache):
    """ALBERT applies one layer's weights at every depth: the cuts still separate the applications, and the shared
    projections are left as sliced (`SHARED_PRUNED`), as with pruned inputs."""
    from test_shared_and_image_families import SAMPLES, _half
    from test_shared_and_image_families import _setup as family_setup

    analysis, _, data = family_setup(family_cache, "albert")
    masks = _half(analysis)
    result = recovery.recover(
        analysis, apply_masks(analysis, masks), masks, data, list(range(SAMPLES)), 8, None, "stream"
    )
    assert {r.kind for r in result.refits} == {"heads", "ffn", "stream"}  # stream refits refit Q, K, V, FFN up too
    assert {(r.applied, r.skipped) for r in result.refits} == {(False, recovery.SHARED_PRUNED)}
