"""Streaming second moments: sums and cross-products accumulated batch by batch, never all activations at once.

Memory is flat in the number of rows: a layer's moments are its (units x units) products however many tokens pass.
The products are the largest state `compress` holds (an FFN of 8,192 neurons: 268 MB in float32, twice that in
float64), so capture accumulates them in float32; recovery, whose ridge systems are solved down to λ = 1e-5 of the
variance, keeps float64 (`precision`). Products are taken about a shift (the first batch's mean): centred values keep
the variance that raw second moments would lose to the square of the mean. Sums, counts and every result handed out
(covariances, raw products) are float64.
"""

from __future__ import annotations

from copy import copy
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Moments:
    """Running sums of x, x xᵀ (and, against a partner y: x yᵀ, y, ‖y‖², optionally y yᵀ) over rows of a matrix."""

    dim: int
    partner_dim: int = 0
    track_partner: bool = False
    precision: type = np.float64  # of the products (and of each batch's arithmetic)
    count: int = 0
    partner_squares: float = 0.0
    total: np.ndarray = field(init=False)  # Σ x, float64
    partner_total: np.ndarray = field(init=False)  # Σ y, float64
    shift: np.ndarray = field(init=False)  # s: the products below are of x - s
    partner_shift: np.ndarray = field(init=False)  # t, for y
    centred_gram: np.ndarray = field(init=False)  # Σ (x - s)(x - s)ᵀ
    centred_cross: np.ndarray = field(init=False)  # Σ (x - s)(y - t)ᵀ
    centred_partner_gram: np.ndarray = field(init=False)  # Σ (y - t)(y - t)ᵀ, when tracked

    def __post_init__(self) -> None:
        self.total, self.partner_total = np.zeros(self.dim), np.zeros(self.partner_dim)
        kind = self.precision
        self.shift, self.partner_shift = np.zeros(self.dim, kind), np.zeros(self.partner_dim, kind)
        self.centred_gram = np.zeros((self.dim, self.dim), kind)
        self.centred_cross = np.zeros((self.dim, self.partner_dim), kind)
        partner = (self.partner_dim, self.partner_dim) if self.track_partner else (0, 0)
        self.centred_partner_gram = np.zeros(partner, kind)

    def add(self, rows: np.ndarray, partner: np.ndarray | None = None) -> None:
        centred = np.array(rows, self.precision)  # a copy, centred in place: a batch of TinyLlama's FFN is 369 MB
        first = self.count == 0 and len(centred) > 0
        if first:
            self.shift = centred.mean(axis=0)
        self.count += len(centred)
        self.total += centred.sum(axis=0, dtype=np.float64)
        centred -= self.shift
        self.centred_gram += centred.T @ centred
        if self.partner_dim:
            partner = np.asarray(partner, self.precision)
            if first:
                self.partner_shift = partner.mean(axis=0)
            partner_centred = partner - self.partner_shift
            self.centred_cross += centred.T @ partner_centred
            self.partner_total += partner.sum(axis=0, dtype=np.float64)
            self.partner_squares += float(np.einsum("ij,ij->", partner, partner, dtype=np.float64))
            if self.track_partner:
                self.centred_partner_gram += partner_centred.T @ partner_centred

    def merged(self, other: Moments) -> Moments:
        """The moments of both sets of rows together (about this one's shifts)."""
        both = Moments(self.dim, self.partner_dim, self.track_partner, self.precision)
        both.count, both.partner_squares = self.count + other.count, self.partner_squares + other.partner_squares
        both.total, both.partner_total = self.total + other.total, self.partner_total + other.partner_total
        both.shift, both.partner_shift = self.shift, self.partner_shift
        x, y = self.shift, self.partner_shift
        both.centred_gram = _summed(self._gram_about(x), other._gram_about(x), self.precision)
        both.centred_cross = _summed(self._cross_about(x, y), other._cross_about(x, y), self.precision)
        if self.track_partner:
            both.centred_partner_gram = _summed(
                self._partner_gram_about(y), other._partner_gram_about(y), self.precision
            )
        return both

    def restricted(self, index: np.ndarray) -> Moments:
        """The moments of the entries of x at `index` (with the same partner)."""
        part = copy(self)
        part.restrict(index)
        return part

    def restrict(self, index: np.ndarray) -> None:
        """Keep the moments of the entries of x at `index` only, in place: the products of the others are released
        (a 4,096-neuron layer's fit and held-out products are 336 MB, unneeded once its units are chosen)."""
        self.dim = len(index)
        self.total, self.shift = self.total[index], self.shift[index]
        self.centred_gram = self.centred_gram[np.ix_(index, index)]
        self.centred_cross = self.centred_cross[index]

    def mapped(self, weights: np.ndarray, bias: np.ndarray) -> Moments:
        """The moments of x against y = z W + b, from these of x against z: what a projection W of z would give,
        without computing y row by row. ‖y‖² follows from z's products: NaN where they are not tracked."""
        weights, bias = weights.astype(np.float64), bias.astype(np.float64)
        part = Moments(self.dim, weights.shape[1], precision=self.precision)
        part.count, part.total, part.shift = self.count, self.total, self.shift
        part.partner_shift = self.partner_shift.astype(np.float64) @ weights + bias
        part.partner_total = self.partner_total @ weights + self.count * bias
        part.centred_cross = self.centred_cross.astype(np.float64) @ weights
        part.centred_gram = self.centred_gram
        part.partner_squares = self._mapped_squares(weights, part.partner_shift) if self.track_partner else np.nan
        return part

    def _mapped_squares(self, weights: np.ndarray, shifted: np.ndarray) -> float:
        """Σ ‖z W + b‖² from z's tracked products, `shifted` being t W + b."""
        centred_total = self.partner_total - self.count * self.partner_shift.astype(np.float64)
        spread = np.einsum("ij,ij->", weights, self.centred_partner_gram.astype(np.float64) @ weights)
        return float(spread + 2 * shifted @ (centred_total @ weights) + self.count * shifted @ shifted)

    def _gram_about(self, shift: np.ndarray) -> np.ndarray:
        return _about(self.centred_gram, self.count, (self.total, self.shift, shift), (self.total, self.shift, shift))

    def _cross_about(self, shift: np.ndarray, partner_shift: np.ndarray) -> np.ndarray:
        partner = (self.partner_total, self.partner_shift, partner_shift)
        return _about(self.centred_cross, self.count, (self.total, self.shift, shift), partner)

    def _partner_gram_about(self, shift: np.ndarray) -> np.ndarray:
        partner = (self.partner_total, self.partner_shift, shift)
        return _about(self.centred_partner_gram, self.count, partner, partner)

    @property
    def gram(self) -> np.ndarray:
        """Σ x xᵀ, float64."""
        return self._gram_about(np.zeros(self.dim))

    @property
    def cross(self) -> np.ndarray:
        """Σ x yᵀ, float64."""
        return self._cross_about(np.zeros(self.dim), np.zeros(self.partner_dim))

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    def covariance(self) -> np.ndarray:
        return self._covariance("gram", self.total, self.shift, self.total, self.shift)

    def cross_covariance(self) -> np.ndarray:
        return self._covariance("cross", self.total, self.shift, self.partner_total, self.partner_shift)

    def partner_covariance(self) -> np.ndarray:
        totals, shift = self.partner_total, self.partner_shift
        return self._covariance("partner_gram", totals, shift, totals, shift)

    def _covariance(self, product: str, a_total, s, b_total, t) -> np.ndarray:
        """E[(a - s)(b - t)ᵀ] - E[a - s] E[b - t]ᵀ: the covariance, from the centred product."""
        n = max(self.count, 1)
        a_mean, b_mean = a_total / n - s, b_total / n - t
        result = getattr(self, f"centred_{product}").astype(np.float64)  # a copy, worked on in place
        result /= n
        result -= np.outer(a_mean, b_mean)
        return result

    def second_moment_diag(self) -> np.ndarray:
        """E[x²] per unit: the squared activation norm (over rows) divided by the row count."""
        n = max(self.count, 1)
        s = self.shift.astype(np.float64)
        centred_total = self.total - self.count * s
        return (np.diag(self.centred_gram).astype(np.float64) + 2 * s * centred_total + self.count * s * s) / n


def _summed(a: np.ndarray, b: np.ndarray, precision: type) -> np.ndarray:
    """a + b in `precision`, summed into a (neither a new sum nor a copy beside them when the type is a's)."""
    a += b
    return a.astype(precision, copy=False)


def _about(centred: np.ndarray, count: int, left: tuple, right: tuple) -> np.ndarray:
    """Σ (a - l)(b - r)ᵀ in float64, from the centred product Σ (a - s)(b - t)ᵀ; `left` is (Σ a, s, l), `right`
    (Σ b, t, r). The correction (Σ a - n s)(t - r)ᵀ + (s - l)(Σ b - n s + n (t - r))ᵀ is one rank-2 product added in
    place: three outer products and their sums were five temporaries the size of the result."""
    (a_total, s, new_s), (b_total, t, new_t) = left, right
    delta_a, delta_b = s.astype(np.float64) - new_s, t.astype(np.float64) - new_t
    result = centred.astype(np.float64)
    if delta_a.any() or delta_b.any():
        a_centred, b_centred = a_total - count * s.astype(np.float64), b_total - count * t.astype(np.float64)
        result += np.stack([a_centred, delta_a], axis=1) @ np.stack([delta_b, b_centred + count * delta_b])
    return result


GATHER_ROWS = 2048
GATHER_BYTES = 2**23  # 8 MiB: wide layers' batches go on sooner (TinyLlama's 7,680 units: at 273 rows), which
# bounds what capture holds waiting for every layer of a pass; BLAS is efficient on fewer rows of wide layers


class Gathered:
    """Rows on their way to `moments`, added a few batches at once: `GATHER_ROWS` rows, or fewer that hold
    `GATHER_BYTES` (a batch that large goes straight through). BLAS forms the products of a few hundred rows at two
    thirds of the speed it reaches with two thousand (minilm-sst2's FFN, 1,536 wide: 22.7 ms for 376 rows, 15.1 ms
    per 376 in 2,048)."""

    def __init__(self, moments: Moments) -> None:
        self.moments = moments
        self._rows: list[np.ndarray] = []
        self._partners: list[np.ndarray] = []

    def add(self, rows: np.ndarray, partner: np.ndarray | None = None) -> None:
        self._rows.append(rows)
        if partner is not None:
            self._partners.append(partner)
        if (
            sum(map(len, self._rows)) >= GATHER_ROWS
            or sum(p.nbytes for p in self._rows + self._partners) >= GATHER_BYTES
        ):
            self._flush()

    def result(self) -> Moments:
        """The moments of every row added."""
        self._flush()
        return self.moments

    def _flush(self) -> None:
        if self._rows:
            rows, self._rows = _joined(self._rows), []
            partner, self._partners = (_joined(self._partners) if self._partners else None), []
            self.moments.add(rows, partner)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
