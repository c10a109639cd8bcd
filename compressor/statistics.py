"""Streaming second moments: sums and cross-products accumulated batch by batch, never all activations at once."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Moments:
    """Running sums of x, x xᵀ (and, against a partner y: x yᵀ, y, ‖y‖², optionally y yᵀ) over rows of a matrix."""

    dim: int
    partner_dim: int = 0
    track_partner: bool = False
    count: int = 0
    partner_squares: float = 0.0
    total: np.ndarray = field(init=False)
    gram: np.ndarray = field(init=False)
    cross: np.ndarray = field(init=False)
    partner_total: np.ndarray = field(init=False)
    partner_gram: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.total = np.zeros(self.dim)
        self.gram = np.zeros((self.dim, self.dim))
        self.cross = np.zeros((self.dim, self.partner_dim))
        self.partner_total = np.zeros(self.partner_dim)
        self.partner_gram = np.zeros((self.partner_dim, self.partner_dim) if self.track_partner else (0, 0))

    def add(self, rows: np.ndarray, partner: np.ndarray | None = None) -> None:
        rows = rows.astype(np.float64, copy=False)
        self.count += len(rows)
        self.total += rows.sum(axis=0)
        self.gram += rows.T @ rows
        if self.partner_dim:
            partner = partner.astype(np.float64, copy=False)
            self.cross += rows.T @ partner
            self.partner_total += partner.sum(axis=0)
            self.partner_squares += float(np.einsum("ij,ij->", partner, partner))
            if self.track_partner:
                self.partner_gram += partner.T @ partner

    def merged(self, other: Moments) -> Moments:
        """The moments of both sets of rows together."""
        both = Moments(self.dim, self.partner_dim, self.track_partner)
        both.count, both.partner_squares = self.count + other.count, self.partner_squares + other.partner_squares
        for name in ("total", "gram", "cross", "partner_total", "partner_gram"):
            setattr(both, name, getattr(self, name) + getattr(other, name))
        return both

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    def covariance(self) -> np.ndarray:
        mean = self.mean
        return self.gram / max(self.count, 1) - np.outer(mean, mean)

    def cross_covariance(self) -> np.ndarray:
        n = max(self.count, 1)
        return self.cross / n - np.outer(self.mean, self.partner_total / n)

    def partner_covariance(self) -> np.ndarray:
        n = max(self.count, 1)
        mean = self.partner_total / n
        return self.partner_gram / n - np.outer(mean, mean)

    def second_moment_diag(self) -> np.ndarray:
        """E[x²] per unit: the squared activation norm (over rows) divided by the row count."""
        return np.diag(self.gram) / max(self.count, 1)
