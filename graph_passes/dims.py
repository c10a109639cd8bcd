"""Union-find over tensor axes, with factorizations for axes that reshapes split into (units, width), and sections
for axes that pack several such axes end to end (a fused projection cut by Split, Slice or joined by Concat)."""

from __future__ import annotations

from dataclasses import dataclass, field

from graph_passes.shape_arithmetic import Product, Quotient


@dataclass(frozen=True)
class Blocker:
    """Why a dimension cannot be pruned: the node that stops it and the reason."""

    node: str
    op_type: str
    reason: str

    def describe(self) -> str:
        return f"{self.op_type} node {self.node!r}: {self.reason}"


@dataclass(frozen=True)
class Piece:
    """`part` holds entries [start, stop) of `flat`: one output of the Slice node `node`. `fixed`: its bounds are
    constants, which would not follow a pruned `flat` (bounds computed from the shape at run time do)."""

    flat: int
    start: int
    stop: int
    part: int
    node: str
    fixed: bool


@dataclass
class DimGraph:
    """Each tensor axis is a dimension; coupled axes are unioned into one class.

    A factorization records that a flat dimension is laid out as (outer, inner), row-major: how a Reshape
    splits a projection's output into (heads, head_dim). Classes joined later keep their factorizations
    consistent when `settle` runs.
    """

    parent: list[int] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    axes: dict[tuple[str, int], int] = field(default_factory=dict)
    factors: list[tuple[int, int, int]] = field(default_factory=list)
    sections: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    packers: dict[int, tuple[str, str]] = field(default_factory=dict)  # sections flat -> (node, op type) making it
    blockers: dict[int, list[Blocker]] = field(default_factory=dict)
    quantized: list[tuple[int, int, str]] = field(default_factory=list)  # (dim, block size, node): K of MatMulNBits
    scaled: list[Quotient | Product] = field(default_factory=list)  # run-time sizes divided or multiplied by a constant
    spelled: list[tuple[int, int, int]] = field(default_factory=list)  # (node index, input slot, dim): a constant size

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        return len(self.parent) - 1

    def axis(self, tensor: str, axis: int, size: int) -> int:
        """The dimension of `tensor`'s `axis`, created on first use."""
        key = (tensor, axis)
        if key not in self.axes:
            self.axes[key] = self.new(size)
        return self.axes[key]

    def find(self, dim: int) -> int:
        while self.parent[dim] != dim:
            self.parent[dim] = self.parent[self.parent[dim]]
            dim = self.parent[dim]
        return dim

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.block(ra, Blocker("", "", f"coupled to an axis of another size ({self.size[ra]} vs {self.size[rb]})"))
            self.block(rb, Blocker("", "", f"coupled to an axis of another size ({self.size[rb]} vs {self.size[ra]})"))
            return
        self.parent[rb] = ra
        self.blockers.setdefault(ra, []).extend(self.blockers.pop(rb, []))

    def factor(self, flat: int, outer: int, inner: int) -> None:
        self.factors.append((flat, outer, inner))

    def concatenate(self, flat: int, parts: list[int], node: str = "", op_type: str = "") -> None:
        """flat = parts laid end to end: a packed Q, K, V projection's output axis, each part split into heads."""
        self.sections.append((flat, tuple(parts)))
        self.packers.setdefault(flat, (node, op_type))

    def packer(self, flat: int, reason: str) -> Blocker:
        """A blocker naming the node that packs (or cuts) `flat` into sections."""
        node, op_type = next((v for k, v in self.packers.items() if self.find(k) == self.find(flat)), ("", ""))
        return Blocker(node, op_type, reason)

    def piece(self, piece: Piece) -> None:
        self.pieces.append(piece)

    def block(self, dim: int, blocker: Blocker) -> None:
        self.blockers.setdefault(self.find(dim), []).append(blocker)

    def blockers_of(self, dim: int) -> list[Blocker]:
        return self.blockers.get(self.find(dim), [])

    def settle(self) -> None:
        """Make factorizations consistent: one flat has one (outer, inner), and equal factors mean equal flats.
        Then pieces that tile their axis become sections, and an axis (k, inner) whose k is split into single
        entries (a fused Q, K, V reshaped to (3, heads, head_dim) and split) becomes k sections of inner."""
        self._settle_factors()
        self._resolve_quotients()
        self._settle_factors()
        self._sections_from_pieces()
        self._unroll_split_factors()
        self._block_factors_of_blocked_flats()
        self.sections = sorted({(self.find(f), tuple(self.find(p) for p in parts)) for f, parts in self.sections})

    def _settle_factors(self) -> None:
        changed = True
        while changed:
            changed = False
            by_flat: dict[int, tuple[int, int]] = {}
            by_parts: dict[tuple[int, int], int] = {}
            for flat, outer, inner in self.factors:
                f, o, i = self.find(flat), self.find(outer), self.find(inner)
                if f in by_flat and by_flat[f] != (o, i):
                    po, pi = by_flat[f]
                    if self.size[po] == self.size[o]:
                        self.union(po, o)
                        self.union(pi, i)
                        changed = True
                    else:
                        self.block(f, Blocker("", "Reshape", "split into blocks of two different sizes"))
                by_flat.setdefault(f, (o, i))
                if (o, i) in by_parts and by_parts[(o, i)] != f:
                    self.union(by_parts[(o, i)], f)
                    changed = True
                by_parts.setdefault((o, i), f)
            self.factors = [(self.find(f), self.find(o), self.find(i)) for f, o, i in self.factors]
        self.factors = sorted(set(self.factors))

    def _resolve_quotients(self) -> None:
        """size(flat) // constant, where flat factors as (outer, inner): the constant spells the factor of its size
        (the inner one first, as in `batch x heads // heads`), which the slicer rewrites when that factor is
        pruned, and the quotient is the other factor, to which its users are tied. A quotient that divides no
        factorization out blocks its users."""
        for quotient in (q for q in self.scaled if isinstance(q, Quotient)):
            factors = self.factorization(quotient.flat)
            if factors is None or quotient.divisor not in (self.size[factors[1]], self.size[factors[0]]):
                reason = "a size computed by dividing by a constant that is no factor of it"
                for user in quotient.users:
                    self.block(user, Blocker(quotient.node, "Div", reason))
                continue
            outer, inner = factors
            spelled, result = (inner, outer) if self.size[inner] == quotient.divisor else (outer, inner)
            self._spell(quotient.index, 1, spelled, quotient.node)
            for user in quotient.users:
                self.union(user, result)
        for product in (p for p in self.scaled if isinstance(p, Product)):
            for user in product.users:
                self._resolve_product(product, user)

    def _spell(self, index: int, slot: int, dim: int, node: str) -> None:
        """Record that input `slot` of node number `index` spells the size of `dim`; one constant that would have
        to spell two different dimensions (layers sharing one shape computation) blocks both."""
        for other_index, other_slot, other in self.spelled:
            if (other_index, other_slot) == (index, slot) and self.find(other) != self.find(dim):
                reason = "one constant spells the sizes of several groups (a shape computation shared between them)"
                self.block(dim, Blocker(node, "", reason))
                self.block(other, Blocker(node, "", reason))
        if (index, slot, self.find(dim)) not in {(i, s, self.find(d)) for i, s, d in self.spelled}:
            self.spelled.append((index, slot, dim))

    def _resolve_product(self, product: Product, user: int) -> None:
        """A dimension sized size(dim) x constant must factor as (dim, constant) or (constant, dim)."""
        factors = self.factorization(user)
        for size, constant in (factors, factors[::-1]) if factors else ():
            if self.find(size) == self.find(product.dim) and self.size[constant] == product.factor:
                self._spell(product.index, product.slot, constant, product.node)
                return
        reason = "a size computed by multiplying by a constant that is no factor of it"
        self.block(user, Blocker(product.node, "Mul", reason))

    def _block_factors_of_blocked_flats(self) -> None:
        """What blocks a flat axis blocks its factors: heads merged with the batch (DeBERTa's (batch x heads, ...)
        layout) are blocked by whatever blocks that merged axis, so no group escapes a blocker through a merge."""
        changed = True
        while changed:
            changed = False
            for flat, outer, inner in self.factors:
                for part in (outer, inner):
                    missing = [b for b in self.blockers_of(flat) if b not in self.blockers_of(part)]
                    if missing:
                        self.blockers.setdefault(self.find(part), []).extend(missing)
                        changed = True

    def _sections_from_pieces(self) -> None:
        by_flat: dict[int, list[Piece]] = {}
        for piece in self.pieces:
            by_flat.setdefault(self.find(piece.flat), []).append(piece)
        for flat, pieces in by_flat.items():
            spans = sorted({(p.start, p.stop, self.find(p.part)) for p in pieces})
            tiles = [s for s, _, _ in spans] == [0] + [e for _, e, _ in spans[:-1]] and spans[-1][1] == self.size[flat]
            fixed = [p for p in pieces if p.fixed]
            single = all(stop - start == 1 for start, stop, _ in spans)  # entries of (3, heads, head_dim): unrolled
            if tiles and (single or not fixed):
                self.concatenate(flat, [part for _, _, part in spans], pieces[0].node, "Slice")
                continue
            node = (fixed or pieces)[0].node
            reason = "cuts this axis at constant bounds" if fixed else "cuts this axis to a fixed range"
            for dim in [flat] + [p.part for p in pieces]:
                self.block(dim, Blocker(node, "Slice", reason))

    def _unroll_split_factors(self) -> None:
        unrolled = {
            self.find(f)
            for f, parts in self.sections
            if len(parts) == self.size[self.find(f)] and all(self.size[self.find(p)] == 1 for p in parts)
        }
        kept = []
        for flat, outer, inner in self.factors:
            if self.find(outer) in unrolled:
                packer = self.packer(outer, "")
                self.concatenate(flat, [inner] * self.size[self.find(outer)], packer.node, packer.op_type)
            else:
                kept.append((flat, outer, inner))
        self.factors = kept

    def factorization(self, dim: int) -> tuple[int, int] | None:
        root = self.find(dim)
        for flat, outer, inner in self.factors:
            if flat == root:
                return outer, inner
        return None
