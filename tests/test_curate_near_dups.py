"""Near-duplicate search over 64-bit perceptual hashes (curators/near_dups.py): the multi-index
search must find exactly the clusters that comparing every pair finds, whatever the chunking, the
input order or the bucket sizes, and pHash must keep resized / re-encoded copies near."""

from __future__ import annotations

import io
import logging
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

import curators.near_dups as nd
from curators.near_dups import Cluster, HashIndex, all_pairs_clusters, chunk_widths, find_clusters, phash64

SEARCHES = [find_clusters, all_pairs_clusters]


def flip(value: int, *bits: int) -> int:
    for bit in bits:
        value ^= 1 << bit
    return value


def chunk_starts(threshold: int, equal_chunks: int) -> list[int]:
    """Lowest bit of every chunk for this threshold and k."""
    starts, offset = [], 0
    for width in chunk_widths(threshold + equal_chunks):
        starts.append(offset)
        offset += width
    return starts


def injected(n: int, copies: int, max_flips: int, seed: int) -> np.ndarray:
    """n random hashes, `copies` of them overwritten by another one with 0..max_flips bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for _ in range(copies):
        src, dst = rng.integers(0, n, 2)
        hashes[dst] = flip(int(hashes[src]), *rng.choice(64, rng.integers(0, max_flips + 1), replace=False).tolist())
    return hashes


# --- hand-made distances ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0, 1, 3, 8, 15])
@pytest.mark.parametrize("equal_chunks", [1, 2, 3, None])
def test_known_distances_across_chunk_boundaries(threshold, equal_chunks):
    k = equal_chunks or 1
    starts = chunk_starts(threshold, k)
    base = 0x0123_4567_89AB_CDEF
    # one bit in each of `threshold` chunks: exactly k chunks still agree (the pigeonhole's tight case)
    at_threshold = flip(base ^ (1 << 63), *starts[1:threshold]) if threshold else base
    # the second bit of each of threshold + 1 chunks: no k chunks agree, threshold + 1 from the base
    # and further from the others
    beyond = flip(base, *(start + 1 for start in starts[: threshold + 1]))
    # the two bits either side of the first chunk boundary
    boundary = flip(base, starts[1] - 1, starts[1]) if len(starts) > 1 else flip(base, 31, 32)
    ids = ["a-base", "b-dup", "c-at", "d-beyond", "e-boundary", "f-far"]
    hashes = [base, base, at_threshold, beyond, boundary, base ^ 0xFFFF_FFFF_0000_0000]
    assert (base ^ at_threshold).bit_count() == threshold
    assert (base ^ beyond).bit_count() == threshold + 1
    expected = [("b-dup", 0), ("c-at", threshold)] + ([("e-boundary", 2)] if threshold >= 2 else [])
    got = find_clusters(ids, hashes, threshold, equal_chunks=equal_chunks)
    assert got == [Cluster("a-base", tuple(expected))]
    assert all_pairs_clusters(ids, hashes, threshold) == got


@pytest.mark.parametrize("search", SEARCHES)
def test_one_bit_apart_in_every_position(search):
    base = 0xDEAD_BEEF_0BAD_F00D
    ids = ["base"] + [f"bit{b:02d}" for b in range(64)]
    got = search(ids, [base] + [flip(base, b) for b in range(64)], 1)
    # the copies are 2 apart from each other, 1 from the base: one cluster
    assert got == [Cluster("base", tuple((f"bit{b:02d}", 1) for b in range(64)))]


@pytest.mark.parametrize("search", SEARCHES)
def test_clusters_are_transitive_and_keep_real_distances(search):
    a = 0
    b = flip(a, *range(6))  # a~b: 6
    c = flip(b, *range(6, 12))  # b~c: 6, a~c: 12
    got = search(["x-c", "m-b", "a-a", "z-far"], [c, b, a, (1 << 64) - 1], 8)
    assert got == [Cluster("a-a", (("m-b", 6), ("x-c", 12)))]


@pytest.mark.parametrize("search", SEARCHES)
def test_representative_is_the_lowest_id_in_string_order(search):
    got = search(["img9", "img10", "img100", "other"], [5, 5, 7, 1 << 40], 2)
    assert got == [Cluster("img10", (("img100", 1), ("img9", 0)))]


@pytest.mark.parametrize("search", SEARCHES)
def test_singletons_empty_and_exact_threshold_zero(search):
    assert search([], [], 8) == []
    assert search(["only"], [42], 8) == []
    assert search(["a", "b", "c"], [1, 1, 3], 0) == [Cluster("a", (("b", 0),))]


# --- equality with the exact baseline ----------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [4, 8, 12])
def test_equals_all_pairs_on_3000_hashes_with_injected_near_duplicates(threshold):
    hashes = injected(3000, 300, threshold + 2, seed=threshold)
    ids = [f"r{i:05d}" for i in range(len(hashes))]
    expected = all_pairs_clusters(ids, hashes, threshold)
    assert len(expected) > 100
    assert find_clusters(ids, hashes, threshold) == expected
    for k in (1, 2, 3):
        assert find_clusters(ids, hashes.tolist(), threshold, equal_chunks=k) == expected


def test_the_same_clusters_whatever_the_input_order():
    hashes = injected(2000, 300, 8, seed=5).tolist()
    ids = [f"id-{i}" for i in range(len(hashes))]
    expected = find_clusters(ids, hashes, 8)
    rng = random.Random(0)
    for _ in range(3):
        order = list(range(len(ids)))
        rng.shuffle(order)
        assert find_clusters([ids[i] for i in order], [hashes[i] for i in order], 8) == expected


@st.composite
def hash_sets(draw):
    bases = draw(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=4))
    values = []
    for _ in range(draw(st.integers(0, 30))):
        bits = draw(st.lists(st.integers(0, 63), max_size=12))
        values.append(flip(draw(st.sampled_from(bases)), *bits))
    return values


@settings(max_examples=150, deadline=None)
@given(hash_sets(), st.integers(0, 15), st.sampled_from([None, 1, 2, 3]), st.randoms(use_true_random=False))
def test_property_equals_all_pairs(hashes, threshold, equal_chunks, rnd):
    ids = [f"{rnd.randrange(10**6)}-{i}" for i in range(len(hashes))]
    expected = all_pairs_clusters(ids, hashes, threshold)
    assert find_clusters(ids, hashes, threshold, equal_chunks=equal_chunks) == expected
    order = list(range(len(ids)))
    rnd.shuffle(order)
    assert find_clusters([ids[i] for i in order], [hashes[i] for i in order], threshold) == expected


# --- huge buckets, batching ---------------------------------------------------------------------------------


def test_long_runs_and_small_batches_stay_exact(monkeypatch):
    hashes = injected(1500, 400, 9, seed=11)
    ids = [f"r{i}" for i in range(len(hashes))]
    expected = all_pairs_clusters(ids, hashes, 8)
    monkeypatch.setattr(nd, "ROWWISE_RUN", 3)
    monkeypatch.setattr(nd, "PAIR_BATCH", 5)
    index = HashIndex(np.unique(hashes), 8, equal_chunks=1)
    index.components()
    assert index.stats.rowwise_runs > 0
    assert find_clusters(ids, hashes, 8, equal_chunks=1) == expected
    assert find_clusters(ids, hashes, 8, equal_chunks=2) == expected


def test_blank_images_make_one_cluster_and_a_huge_bucket_warns_once(monkeypatch, caplog):
    """Thousands of (near-)blank images: exact copies merge before indexing; near-identical ones
    share every chunk key, a run above ROWWISE_RUN is checked row by row (and HUGE_BUCKET warns)."""
    monkeypatch.setattr(nd, "ROWWISE_RUN", 100)
    monkeypatch.setattr(nd, "HUGE_BUCKET", 400)
    blank = 0x8000_0000_0000_0000
    rng = np.random.default_rng(3)
    near_blank = {flip(blank, *rng.choice(18, 3, replace=False).tolist()) for _ in range(2000)}
    others = injected(2000, 0, 0, seed=4).tolist()
    hashes = [blank] * 1000 + sorted(near_blank) + others
    ids = [f"h{i:05d}" for i in range(len(hashes))]
    with caplog.at_level(logging.WARNING, logger="curators.near_dups"):
        got = find_clusters(ids, hashes, 8, equal_chunks=1)
    assert got == all_pairs_clusters(ids, hashes, 8)
    blank_cluster = next(c for c in got if c.representative == "h00000")
    assert len(near_blank) > 500 and len(blank_cluster.members) == 1000 - 1 + len(near_blank)
    warnings = [r for r in caplog.records if "share a" in r.getMessage()]
    assert len(warnings) == 1 and "pairwise" in warnings[0].getMessage()


def test_the_cost_model_lengthens_keys_as_n_grows():
    chosen = [nd.choose_equal_chunks(n, 8) for n in (100, 10_000, 100_000, 1_000_000, 10_000_000)]
    assert chosen == sorted(chosen) and chosen[0] == 1 and chosen[-1] >= 4
    assert nd.choose_equal_chunks(10**6, 0) == 1
    for m in (1, 9, 12, 16, 33):
        widths = chunk_widths(m)
        assert sum(widths) == 64 and max(widths) - min(widths) <= 1 and len(widths) == m


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("search", SEARCHES)
def test_bad_inputs_are_named(search):
    with pytest.raises(ValueError, match="2 ids but 1 hashes"):
        search(["a", "b"], [1], 4)
    with pytest.raises(ValueError, match=r"id 'b' at positions 1 and 3"):
        search(["a", "b", "c", "b"], [1, 2, 3, 4], 4)
    for bad in (-1, 2**64, 1.5, True, "7"):
        with pytest.raises(ValueError, match=r"hash at position 1 is not an unsigned 64-bit int"):
            search(["a", "b"], [1, bad], 4)
    for threshold in (-1, 33, 2.0, True):
        with pytest.raises(ValueError, match=r"threshold must be an int in 0\.\.32"):
            search(["a"], [1], threshold)


def test_bad_equal_chunks_is_named():
    with pytest.raises(ValueError, match=r"equal_chunks must be 1\.\.56 for threshold 8, got 0"):
        HashIndex(np.array([1, 2], dtype=np.uint64), 8, equal_chunks=0)
    with pytest.raises(ValueError, match="hash at position 0"):
        HashIndex(np.array([-3, 2]), 8)


# --- pHash ----------------------------------------------------------------------------------------------


def drawn(kind: int, size: int = 256) -> Image.Image:
    """Unrelated test pictures: a gradient in one direction with a shape drawn on it."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    ramps = [xx, yy, (xx + yy) / 2, 1 - xx, np.hypot(xx - 0.5, yy - 0.5) * 1.4, np.abs(np.sin(6 * xx))]
    pixels = (np.stack([ramps[kind], ramps[(kind + 1) % 6], ramps[(kind + 2) % 6]], -1) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    s = size
    shapes = [
        lambda: draw.ellipse((s * 0.1, s * 0.1, s * 0.5, s * 0.5), fill=(250, 30, 30)),
        lambda: draw.rectangle((s * 0.55, s * 0.2, s * 0.9, s * 0.8), fill=(20, 20, 200)),
        lambda: draw.polygon([(s * 0.5, s * 0.05), (s * 0.95, s * 0.9), (s * 0.05, s * 0.9)], fill=(10, 160, 10)),
        lambda: [draw.rectangle((x, y, x + s // 3, y + s // 3), fill=(0, 0, 0)) for x, y in ((0, 0), (s // 2, s // 2))],
        lambda: draw.ellipse((s * 0.3, s * 0.55, s * 0.95, s * 0.95), fill=(255, 255, 255)),
        lambda: draw.line((0, s, s, 0), fill=(255, 200, 0), width=s // 10),
    ]
    shapes[kind]()
    return image


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def test_phash64_is_imagehashs_hex_as_an_int():
    import imagehash

    image = drawn(0)
    h = imagehash.phash(image, hash_size=8)
    assert phash64(image) == int(str(h), 16)
    assert (phash64(image) >> 63) == int(h.hash[0, 0]) and (phash64(image) & 1) == int(h.hash[7, 7])
    assert 0 <= phash64(image) < 2**64


def test_phash64_keeps_copies_near_and_unrelated_images_far():
    images = [drawn(kind) for kind in range(6)]
    hashes = [phash64(image) for image in images]
    for image, h in zip(images, hashes):
        copies = [image.resize((128, 128)), image.resize((400, 400)), image.resize((96, 96)), jpeg(image, 40),
                  jpeg(image.resize((180, 180)), 60)]
        for copy in copies:
            assert (h ^ phash64(copy)).bit_count() <= 8
    for i in range(len(hashes)):
        for j in range(i + 1, len(hashes)):
            assert (hashes[i] ^ hashes[j]).bit_count() > 8, (i, j)
    ids = [f"img{i}" for i in range(6)] + ["img0-small", "img3-jpeg"]
    both = hashes + [phash64(images[0].resize((100, 100))), phash64(jpeg(images[3], 50))]
    assert find_clusters(ids, both, 8) == [Cluster("img0", (("img0-small", (hashes[0] ^ both[6]).bit_count()),)),
                                           Cluster("img3", (("img3-jpeg", (hashes[3] ^ both[7]).bit_count()),))]


def test_confirm_clusters_splits_pairs_whose_features_disagree():
    """pHash alone merges flat images of other colours; the thumbnails keep them apart."""
    from curators.near_dups import confirm_clusters

    ids = ["a", "b", "c", "d"]
    hashes = {"a": 0x0F0F, "b": 0x0F0F, "c": 0x0F0E, "d": 0x0F0F}
    red, redish, blue = np.full(192, 200, np.uint8), np.full(192, 201, np.uint8), np.zeros(192, np.uint8)
    features = {"a": red, "b": blue, "c": redish, "d": blue}
    clusters = find_clusters(ids, [hashes[i] for i in ids], 4)
    assert [c.representative for c in clusters] == ["a"]  # pHash: one cluster of four
    confirmed = confirm_clusters(clusters, hashes, features, 4, 2.0)
    assert [(c.representative, c.members) for c in confirmed] == [("a", (("c", 1),)), ("b", (("d", 0),))]
    assert confirm_clusters(clusters, hashes, features, 0, 2.0) == [Cluster("b", (("d", 0),))]
