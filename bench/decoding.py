"""Decoders in `compress bench`: prefill (a batch of prompts, empty KV caches) and decoding (greedy generation with the
KV cache fed back), timed interleaved across models as encoders are.

Generating N new tokens is one prefill, whose last logits give the first token (time to first token, TTFT), then
N - 1 decoding steps of one token per sequence, each fed the previous step's `present.*` outputs as its
`past_key_values.*`, the attention mask grown by one and the next position id. A step's time covers the session run,
the argmax and building the next feeds, as a generation loop pays them. Decode throughput is batch x (N - 1) tokens
over the time of those steps. Greedy: every model generates from the same prompts, each its own tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from compressor.decoder import MASK, POSITIONS, TOKENS, DecoderSignature, detect


@dataclass(frozen=True)
class Generation:
    """Timings of `runs` greedy generations: time to first token, and every decoding step's seconds."""

    ttft: list[float]
    steps: list[float]
    batch: int

    def step_percentile(self, q: float) -> float:
        return float(np.percentile(self.steps, q))

    @property
    def tokens_per_second(self) -> float:
        return self.batch * len(self.steps) / sum(self.steps)


def signature(graph: onnx.ModelProto) -> DecoderSignature | None:
    return detect(graph)


def prompt_feeds(sig: DecoderSignature, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds of a prefill of `ids` (batch, prompt length): all tokens real, empty caches of this model's shape."""
    return sig.feeds({TOKENS: ids})


def generate(
    session: ort.InferenceSession, sig: DecoderSignature, feeds: dict[str, np.ndarray], new_tokens: int
) -> tuple[float, list[float], np.ndarray]:
    """Greedy generation of `new_tokens` from a prefill of `feeds`: (seconds to the first token, seconds of each
    following step, the tokens (batch, new_tokens))."""
    names = [o.name for o in session.get_outputs()]
    caches = [(c.name, names.index(c.output)) for c in sig.caches]
    logits_at = names.index("logits")
    batch, length = feeds[TOKENS].shape
    start = time.perf_counter()
    outputs = session.run(None, feeds)
    token = outputs[logits_at][:, -1].argmax(-1)
    ttft = time.perf_counter() - start
    tokens, steps = [token], []
    for position in range(length, length + new_tokens - 1):
        start = time.perf_counter()
        step = {TOKENS: token[:, None].astype(np.int64)}
        if sig.has_mask:
            step[MASK] = np.ones((batch, position + 1), dtype=np.int64)
        if sig.has_positions:
            step[POSITIONS] = np.full((batch, 1), position, dtype=np.int64)
        step.update((name, outputs[index]) for name, index in caches)
        outputs = session.run(None, step)
        token = outputs[logits_at][:, -1].argmax(-1)
        steps.append(time.perf_counter() - start)
        tokens.append(token)
    return ttft, steps, np.stack(tokens, axis=1)


def interleaved_generation(
    sessions: Sequence[ort.InferenceSession],
    signatures: Sequence[DecoderSignature],
    inputs: Sequence[dict],
    new_tokens: int,
    warmup: int,
    runs: int,
) -> list[Generation]:
    """`runs` timed generations of every model after `warmup` untimed ones, the models taking turns (the order
    rotating every round, as `compressor.timing.interleaved`)."""
    for session, sig, feeds in zip(sessions, signatures, inputs):
        for _ in range(warmup):
            generate(session, sig, feeds, new_tokens)
    ttft: list[list[float]] = [[] for _ in sessions]
    steps: list[list[float]] = [[] for _ in sessions]
    for round_number in range(runs):
        shift = round_number % len(sessions)
        for index in [*range(shift, len(sessions)), *range(shift)]:
            first, rest, _ = generate(sessions[index], signatures[index], inputs[index], new_tokens)
            ttft[index].append(first)
            steps[index].extend(rest)
    batch = len(inputs[0][TOKENS])
    return [Generation(t, s, batch) for t, s in zip(ttft, steps)]


def decode_measures(generation: Generation, baseline: Generation) -> dict:
    """A decode row's numbers: per-step latency percentiles (ms per generated token of every sequence in the
    batch), time to first token, tokens/s, and the speedup in step latency over the baseline (median against
    median)."""
    steps_ms = np.asarray(generation.steps) * 1e3
    return {
        "p50_ms": round(generation.step_percentile(50) * 1e3, 3),
        "p90_ms": round(generation.step_percentile(90) * 1e3, 3),
        "p99_ms": round(generation.step_percentile(99) * 1e3, 3),
        "min_ms": round(float(steps_ms.min()), 3),
        "max_ms": round(float(steps_ms.max()), 3),
        "std_ms": round(float(steps_ms.std()), 3),
        "spread": round(
            (generation.step_percentile(90) - generation.step_percentile(10)) / generation.step_percentile(50), 3
        ),
        "ttft_ms": round(float(np.median(generation.ttft)) * 1e3, 3),
        "tokens_per_s": round(generation.tokens_per_second, 1),
        "speedup": round(baseline.step_percentile(50) / generation.step_percentile(50), 3),
    }
