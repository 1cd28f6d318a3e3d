"""Near-duplicate images by perceptual hash, without comparing every pair.

Resized, re-encoded or lightly edited copies of one image are near duplicates: their 64-bit pHashes
differ in a few bits (typically <= 8-10 of 64), while unrelated images differ in ~32. Comparing all
n^2/2 pairs is fine for 10k images and hopeless for millions, so `find_clusters` uses multi-index
hashing (Norouzi, Punjani & Fleet, "Fast search in Hamming space with multi-index hashing", CVPR
2012), generalised by the pigeonhole principle:

    split the 64 bits into m = threshold + k disjoint chunks (as equal as possible). Two hashes
    within Hamming distance <= threshold differ in at most `threshold` chunks, so they agree exactly
    on at least k of them, hence on at least one of the C(m, k) combinations of k chunks.

k = 1 is Norouzi's scheme (m = threshold + 1 chunks, one table per chunk). It is exact, but for
threshold 8 a chunk is 7 bits long: a million random hashes put ~8,000 items in every bucket and the
candidate pairs are 7% of all pairs. A larger k makes longer keys (k * 64 / m bits) at the price of
more of them, so `HashIndex` picks k from n with a cost model (uniform hashes): one key pass costs
~n, its candidates ~(n^2 / 2) / 2^key_bits. Large thresholds degrade toward quadratic whatever k is
(the keys get short or very many): pHash near duplicates need <= 8-10 of 64; 0..32 is accepted.

Each combination is one pass, all numpy: a key per hash (the chunks' bits, mixed into the high
bits of a uint64 by a multiplication; equal chunks give equal keys, a rare unequal collision only
adds a candidate) with the hash's position in the low bits, one in-place sort, and then the pairs of
sorted neighbours (i, i + 1), (i, i + 2), .. that share the key are the candidates, kept when their
exact Hamming distance (popcount of the XOR) is <= threshold. Kept pairs go into a vectorised
union-find; the clusters are its connected components. Passes run one after another and keep
nothing, so memory is O(n) (a few uint64 arrays and the union-find's parents) rather than an
n * m table: about 110 MB above the input for a million hashes, which take ~6 s (k = 4, 495 passes;
benchmarks/curate.py).

Huge buckets (many hashes sharing a key, e.g. thousands of near-white images) stay exact and never
list all their pairs: a run longer than `ROWWISE_RUN` is checked row by row, each member outside the
run's largest component against the members not in its own component. That is quadratic in the
run's length (a warning, once per index, names a run above `HUGE_BUCKET`). When such a group is near
itself it is one component after its first pass and later passes skip it in O(run); a big group of
hashes that only share a key but are not near each other pays again in every pass that groups it.
Exact duplicates (equal hashes) are merged before indexing and never form buckets of their own.

Clusters are deterministic whatever the input order: they are the connected components of the
"distance <= threshold" graph, a function of the (id, hash) pairs alone; the representative is the
lowest id (string order) and members are sorted by id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from math import comb

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

HASH_BITS = 64
MAX_THRESHOLD = 32
"""Beyond half the bits "near" means nothing for pHash (unrelated images differ in ~32)."""
MAX_KEYS = 2_000
"""Most chunk combinations (passes) the cost model may choose."""
ROWWISE_RUN = 2_048
"""A run of equal keys longer than this is checked row by row instead of pair by pair."""
HUGE_BUCKET = 10_000
"""A run longer than this is logged as a warning: its check is quadratic in its length."""
PAIR_BATCH = 1 << 20
"""Verified pairs buffered before the union-find merges them."""
_MIX = np.uint64(0x9E3779B97F4A7C15)
"""Odd multiplier (2^64 / golden ratio): spreads a masked hash over the high bits of the key."""
# The cost model's constants, measured at 1M hashes on a 2-core machine: seconds per hash per pass
# (key, sort, runs) and per candidate pair (pair generation, gathers, popcount).
_COST_PER_ITEM = 6.5e-9
_COST_PER_PAIR = 2.6e-8


def phash64(image: Image.Image) -> int:
    """`imagehash.phash(image, hash_size=8)` as an unsigned 64-bit int.

    Bit order: the 8x8 boolean matrix of low-frequency DCT coefficients (above the median) read row
    by row; element [0, 0] is the most significant bit (2^63), [7, 7] the least. This is the
    integer of imagehash's hex string (`int(str(h), 16)`), so hashes stored as hex interoperate.
    """
    import imagehash

    bits = imagehash.phash(image, hash_size=8).hash.reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


@dataclass(frozen=True, slots=True)
class Cluster:
    """One group of near duplicates: the representative (lowest id) and the others, sorted by id,
    each with its Hamming distance to the representative (may exceed the threshold: clusters are
    connected components, a ~ b ~ c puts a and c together)."""

    representative: str
    members: tuple[tuple[str, int], ...]


@dataclass
class IndexStats:
    """What one `HashIndex.components()` call did (for benchmarks and logs): `candidates` pairs
    compared, `edges` of them near (a pair sharing several keys counts once per pass)."""

    items: int = 0
    chunks: int = 0
    equal_chunks: int = 0
    passes: int = 0
    candidates: int = 0
    edges: int = 0
    rowwise_runs: int = 0
    largest_run: int = 0
    chunk_widths: tuple[int, ...] = field(default_factory=tuple)


class HashIndex:
    """Multi-index hashing over a fixed set of 64-bit hashes (see the module docstring).

    `equal_chunks` (k) fixes how many chunks a near pair must share: 1 is Norouzi's m = threshold
    + 1 chunk tables; None lets the cost model choose from n. `components()` labels every position
    with its connected component of the "distance <= threshold" graph. Give it distinct hashes
    (`find_clusters` does): equal ones share every key and make long runs.
    """

    def __init__(self, hashes: np.ndarray | Sequence[int], threshold: int, *, equal_chunks: int | None = None):
        check_threshold(threshold)
        self.hashes = as_hash_array(hashes)
        self.threshold = threshold
        if equal_chunks is None:
            equal_chunks = choose_equal_chunks(len(self.hashes), threshold)
        self.equal_chunks = equal_chunks
        if self.equal_chunks < 1 or threshold + self.equal_chunks > HASH_BITS:
            raise ValueError(f"HashIndex: equal_chunks must be 1..{HASH_BITS - threshold} for threshold "
                             f"{threshold}, got {self.equal_chunks}")
        self.widths = chunk_widths(threshold + self.equal_chunks)
        self.stats = IndexStats(items=len(self.hashes), chunks=len(self.widths), equal_chunks=self.equal_chunks,
                                chunk_widths=self.widths)
        self._warned = False

    def key_masks(self) -> Iterator[np.uint64]:
        """One bit mask per combination of `equal_chunks` chunks (the bits a pass compares)."""
        masks, offset = [], 0
        for width in self.widths:
            masks.append(((1 << width) - 1) << offset)
            offset += width
        for combo in combinations(masks, self.equal_chunks):
            yield np.uint64(sum(combo))

    def components(self) -> np.ndarray:
        """Component label (the lowest position in it) of every position, as an int64 array."""
        n = len(self.hashes)
        forest = _Forest(n)
        if n < 2:
            return forest.labels()
        index_bits = max(1, (n - 1).bit_length())
        positions = np.arange(n, dtype=np.uint64)
        low = np.uint64((1 << index_bits) - 1)
        high = ~low
        packed, keys, same = np.empty(n, np.uint64), np.empty(n, np.uint64), np.empty(n - 1, bool)
        for mask in self.key_masks():
            self.stats.passes += 1
            # key in the high bits, position in the low bits: one in-place sort groups equal keys
            np.bitwise_and(self.hashes, mask, out=packed)
            np.multiply(packed, _MIX, out=packed)
            np.bitwise_and(packed, high, out=packed)
            np.bitwise_or(packed, positions, out=packed)
            packed.sort()
            np.bitwise_and(packed, high, out=keys)
            np.equal(keys[1:], keys[:-1], out=same)  # same[i]: sorted i and i + 1 share the key
            if n > ROWWISE_RUN and (keys[ROWWISE_RUN:] == keys[:-ROWWISE_RUN]).any():
                self._long_runs(packed, low, same, forest)
            self._check_run_pairs(packed, low, same, forest)
        return forest.labels()

    def _check_run_pairs(self, packed: np.ndarray, low: np.uint64, same: np.ndarray, forest: _Forest) -> None:
        """Verify every pair of sorted positions (i, i + d) within one run, for d = 1, 2, ..: the
        runs are short (~1-3 items for uniform hashes), so each d is one vectorised step."""
        left = np.flatnonzero(same)
        step = 1
        while len(left):
            a = (packed[left] & low).astype(np.int64)
            b = (packed[left + step] & low).astype(np.int64)
            self._verify(a, b, forest)
            left = left[left + step < len(same)]
            left = left[same[left + step]]  # i + step + 1 still in i's run
            step += 1
        self.stats.largest_run = max(self.stats.largest_run, step if step > 1 else 0)

    def _long_runs(self, packed: np.ndarray, low: np.uint64, same: np.ndarray, forest: _Forest) -> None:
        """Check runs longer than ROWWISE_RUN row by row and take them out of `same`."""
        edges = np.diff(np.concatenate(([0], same.view(np.int8), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1
        long = ends - starts > ROWWISE_RUN
        for start, end in zip(starts[long].tolist(), ends[long].tolist()):
            self.stats.largest_run = max(self.stats.largest_run, end - start)
            self._check_run_rowwise((packed[start:end] & low).astype(np.int64), forest)
            same[start:end - 1] = False

    def _verify(self, a: np.ndarray, b: np.ndarray, forest: _Forest) -> None:
        self.stats.candidates += len(a)
        near = np.bitwise_count(self.hashes[a] ^ self.hashes[b]) <= self.threshold
        self.stats.edges += int(near.sum())
        forest.add(a[near], b[near])

    def _check_run_rowwise(self, members: np.ndarray, forest: _Forest) -> None:
        """Every pair of a long run, quadratic in its length but never a list of all its pairs: rows
        outside the run's largest component, each against the members not in the row's component."""
        self.stats.rowwise_runs += 1
        if len(members) > HUGE_BUCKET and not self._warned:
            self._warned = True
            log.warning("near duplicates: %d hashes share a %d-chunk key (e.g. blank images); checking them "
                        "pairwise, quadratic in that number (warned once per index)", len(members),
                        self.equal_chunks)
        forest.flush()
        labels = forest.parent[members]
        values, counts = np.unique(labels, return_counts=True)
        if len(values) == 1:
            return
        hashes = self.hashes[members]
        for row in np.flatnonzero(labels != values[np.argmax(counts)]).tolist():
            other = np.flatnonzero(labels != labels[row])
            near = other[np.bitwise_count(hashes[other] ^ hashes[row]) <= self.threshold]
            self.stats.candidates += len(other)
            if len(near):
                merged = np.unique(np.append(labels[near], labels[row]))
                labels[np.isin(labels, merged)] = merged[0]
        first = {}
        for position, label in enumerate(labels.tolist()):
            first.setdefault(label, position)
        anchors = np.array([first[label] for label in labels.tolist()])
        forest.add(members, members[anchors])
        forest.flush()


class _Forest:
    """Union-find over positions 0..n-1 with vectorised unions: edges are buffered, then merged in
    rounds that hook each edge's larger root under its smaller one (so a root is the lowest position
    of its tree) and re-point every position at its root by pointer jumping, until no edge spans two
    roots (a few rounds, each O(n + edges))."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        if len(a):
            self._pending.append((a, b))
            self._pending_size += len(a)
            if self._pending_size >= PAIR_BATCH:
                self.flush()

    def flush(self) -> None:
        """Merge the buffered edges; afterwards `parent[x]` is the root of x for every x."""
        if not self._pending:
            return
        a = np.concatenate([p[0] for p in self._pending])
        b = np.concatenate([p[1] for p in self._pending])
        self._pending, self._pending_size = [], 0
        while True:
            a, b = self.parent[a], self.parent[b]
            apart = a != b
            if not apart.any():
                return
            a, b = a[apart], b[apart]
            np.minimum.at(self.parent, np.maximum(a, b), np.minimum(a, b))
            self._compress()

    def _compress(self) -> None:
        while True:
            up = self.parent[self.parent]
            if np.array_equal(up, self.parent):
                return
            self.parent = up

    def labels(self) -> np.ndarray:
        """The root (lowest position) of every position's component."""
        self.flush()
        return self.parent


def chunk_widths(m: int) -> tuple[int, ...]:
    """64 bits in m contiguous chunks as equal as possible (the first 64 % m one bit longer)."""
    return tuple(HASH_BITS // m + (i < HASH_BITS % m) for i in range(m))


def choose_equal_chunks(n: int, threshold: int) -> int:
    """The k (chunks a near pair must share) with the lowest modelled cost for n uniform hashes."""
    best, best_cost = 1, float("inf")
    for k in range(1, HASH_BITS - threshold + 1):
        m = threshold + k
        keys = comb(m, k)
        if keys > MAX_KEYS:
            break
        key_bits = k * HASH_BITS / m  # the average over the combinations
        cost = keys * (n * _COST_PER_ITEM + n * n / 2 * 2.0 ** -key_bits * _COST_PER_PAIR)
        if cost < best_cost:
            best, best_cost = k, cost
        if threshold == 0:
            break
    return best


def check_threshold(threshold: int) -> None:
    is_int = isinstance(threshold, int | np.integer) and not isinstance(threshold, bool)
    if not is_int or not 0 <= threshold <= MAX_THRESHOLD:
        raise ValueError(f"near duplicates: threshold must be an int in 0..{MAX_THRESHOLD} (bits of {HASH_BITS}), "
                         f"got {threshold!r}")


def as_hash_array(hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    """The hashes as a uint64 array; a value that is no unsigned 64-bit int is named by position."""
    if isinstance(hashes, np.ndarray):
        if hashes.dtype.kind == "u" or (hashes.dtype.kind == "i" and (len(hashes) == 0 or hashes.min() >= 0)):
            return hashes.astype(np.uint64, copy=False)
    for position, value in enumerate(hashes):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < 1 << HASH_BITS:
            raise ValueError(f"near duplicates: hash at position {position} is not an unsigned 64-bit int: {value!r}")
    return np.fromiter(hashes, dtype=np.uint64, count=len(hashes))


def find_clusters(ids: Sequence[str], hashes: Sequence[int] | np.ndarray, threshold: int,
                  *, equal_chunks: int | None = None) -> list[Cluster]:
    """Clusters of near duplicates: connected components of "Hamming distance <= threshold" among
    the (id, hash) pairs, singletons left out, sorted by representative (see the module docstring).
    Exact duplicates (distance 0) are included."""
    check_threshold(threshold)
    values = _checked(ids, hashes)
    unique, inverse = np.unique(values, return_inverse=True)
    labels = HashIndex(unique, threshold, equal_chunks=equal_chunks).components()
    return _clusters(ids, values, labels[inverse])


def all_pairs_clusters(ids: Sequence[str], hashes: Sequence[int] | np.ndarray, threshold: int) -> list[Cluster]:
    """The same clusters by comparing every pair (O(n^2), numpy row by row): the exact baseline."""
    check_threshold(threshold)
    values = _checked(ids, hashes)
    sets = _DisjointSets(len(values))
    for row in range(len(values) - 1):
        near = np.flatnonzero(np.bitwise_count(values[row + 1:] ^ values[row]) <= threshold) + row + 1
        for other in near.tolist():
            sets.union(row, other)
    return _clusters(ids, values, np.array([sets.root(x) for x in range(len(values))], dtype=np.int64))


def confirm_clusters(clusters: list[Cluster], hashes: dict[str, int], features: dict[str, np.ndarray],
                     threshold: int, max_diff: float) -> list[Cluster]:
    """Split each cluster into the components of its confirmed pairs: Hamming distance within
    `threshold` and the two ids' feature vectors (e.g. 8x8 RGB thumbnails) within `max_diff` mean
    absolute difference. pHash sees the layout of luminance only; flat images of other colours can
    share one. Pairwise inside a cluster (small on real data; row by row keeps memory linear)."""
    out: list[Cluster] = []
    for cluster in clusters:
        ids = [cluster.representative] + [k for k, _ in cluster.members]
        values = np.array([hashes[k] for k in ids], dtype=np.uint64)
        vectors = np.stack([features[k] for k in ids]).astype(np.int16)
        sets = _DisjointSets(len(ids))
        for i in range(len(ids) - 1):
            near = np.bitwise_count(values[i + 1:] ^ values[i]) <= threshold
            close = np.abs(vectors[i + 1:] - vectors[i]).mean(axis=1) <= max_diff
            for j in (np.flatnonzero(near & close) + i + 1).tolist():
                sets.union(i, j)
        out += _clusters(ids, values, np.array([sets.root(x) for x in range(len(ids))], dtype=np.int64))
    return sorted(out, key=lambda c: c.representative)


class _DisjointSets:
    """Union-find over 0..n-1 in plain lists (the lower root wins), for the pairwise paths."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def root(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        self.parent[max(ra, rb)] = min(ra, rb)


def _checked(ids: Sequence[str], hashes: Sequence[int] | np.ndarray) -> np.ndarray:
    if len(ids) != len(hashes):
        raise ValueError(f"near duplicates: {len(ids)} ids but {len(hashes)} hashes")
    if len(set(ids)) != len(ids):
        seen: dict[str, int] = {}
        for position, name in enumerate(ids):
            if name in seen:
                raise ValueError(f"near duplicates: id {name!r} at positions {seen[name]} and {position}")
            seen[name] = position
    return as_hash_array(hashes)


def _clusters(ids: Sequence[str], values: np.ndarray, labels: np.ndarray) -> list[Cluster]:
    """Clusters from a component label per position (singletons dropped)."""
    if len(labels) == 0:
        return []
    _, dense = np.unique(labels, return_inverse=True)
    shared = np.bincount(dense)[dense] > 1
    positions = np.flatnonzero(shared)
    positions = positions[np.argsort(dense[positions], kind="stable")]
    bounds = np.flatnonzero(np.diff(dense[positions])) + 1
    clusters = []
    for group in np.split(positions, bounds):
        if not len(group):
            continue
        named = sorted((ids[p], p) for p in group.tolist())
        rep_id, rep = named[0]
        rep_hash = int(values[rep])
        members = tuple((name, (rep_hash ^ int(values[p])).bit_count()) for name, p in named[1:])
        clusters.append(Cluster(rep_id, members))
    clusters.sort(key=lambda c: c.representative)
    return clusters
