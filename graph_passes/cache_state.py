"""A decoder's KV cache: `past_key_values.N.key` / `.value` inputs and `present.N.key` / `.value` outputs are state the
model hands itself between decoding steps, not a user-facing interface. A group of KV heads may shrink their heads
axis; the sliced model then declares the new concrete size on them."""

from __future__ import annotations

import re

CACHE_INPUT = re.compile(r"past_key_values[._](\d+)[._](key|value)")
CACHE_OUTPUT = re.compile(r"present[._](\d+)[._](key|value)")


def is_cache(name: str) -> bool:
    return bool(CACHE_INPUT.fullmatch(name) or CACHE_OUTPUT.fullmatch(name))
