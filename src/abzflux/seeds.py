"""Every random stream of a run, derived from ``run.seed`` by name, in one place.

A stream is a :class:`numpy.random.SeedSequence` (or an integer seed for code that takes one)
named by what it drives, so that two analyses never share random numbers by accident and a
new analysis gets a stream of its own without shifting the others. The derivations below are
the ones the study has always used: outputs are unchanged by routing them through here
(docs/models.md, "Random streams").

====================  =====================================  ==================================
stream                drives                                 derivation (s = run.seed)
====================  =====================================  ==================================
``forest``            final forest of a flux (trees)         ``s``
``cv_fold``           fold × mtry forest of the LOSO CV      ``SeedSequence([s, fold, mtry])`` → uint32
``importance``        permutation importance shuffles        ``SeedSequence([s, 11])``
``qrf_draw``          quantile-forest leaf draws             ``SeedSequence([s, 7])``
``bootstrap_rows``    bootstrap member b's resample          ``SeedSequence([s, 1000 + b])``
``bootstrap_forest``  bootstrap member b's forest            ``SeedSequence([s, 2000 + b])`` → uint32
``bootstrap_cv``      bootstrap member b's mtry re-tuning    ``s + b`` (a CV seed, fold streams below it)
``kmeans``            k-means environmental clusters         ``s``
``network_draw``      network replicate r's field and draws  ``SeedSequence([s, 3000 + r])``
``network_forest``    network replicate forest k             ``SeedSequence([s, 4000 + k])`` → uint32
``cv_oob_sites``      site_oob CV: the sites each tree       ``SeedSequence([s, 5000])``
                      holds out (shared by every mtry)
``cv_oob``            site_oob CV: the mtry forest's trees   ``SeedSequence([s, 6000 + mtry])`` → uint32
``network_disc``      network distance term: the buffered    ``SeedSequence([s, 7000 + k])``
                      CV design of flux k
``network_distance``  network distance term: flux k's        ``SeedSequence([s, 7100 + k])`` → uint32
                      buffered CV forest
``network_field``     network replicate r's distance fields  ``SeedSequence([s, 100000 + r])``
``extrap_multicv``    extrapolation term's leave-cluster-out ``SeedSequence([s, 7200])`` → uint32
                      forest
====================  =====================================  ==================================

A forest seed ``f`` seeds its trees with ``SeedSequence(f).generate_state(n_trees)`` (``_rf``).
"""

from __future__ import annotations

import numpy as np

# name -> (the SeedSequence's entropy offsets, or None for a plain integer seed)
_OFFSET = {
    "importance": 11,
    "qrf_draw": 7,
    "bootstrap_rows": 1000,
    "bootstrap_forest": 2000,
    "network_draw": 3000,
    "network_forest": 4000,
    "cv_oob_sites": 5000,
    "cv_oob": 6000,
    "network_disc": 7000,
    "network_distance": 7100,
    "network_field": 100_000,
    "extrap_multicv": 7200,  # one per replicate: room for any replicate count
}
STREAMS = (
    "forest",
    "cv_fold",
    "importance",
    "qrf_draw",
    "bootstrap_rows",
    "bootstrap_forest",
    "bootstrap_cv",
    "kmeans",
    "network_draw",
    "network_forest",
    "cv_oob_sites",
    "cv_oob",
    "network_disc",
    "network_distance",
    "network_field",
    "extrap_multicv",
)


def _check(seed: int, name: str) -> None:
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; known: {', '.join(STREAMS)}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")


def sequence(seed: int, name: str, *index: int) -> np.random.SeedSequence:
    """The :class:`~numpy.random.SeedSequence` of stream ``name`` (``index``: fold and mtry for
    ``cv_fold``, the member for the bootstrap streams)."""
    _check(seed, name)
    if name == "cv_fold":
        fold, mtry = index
        return np.random.SeedSequence([int(seed), int(fold), int(mtry)])
    if name in _OFFSET:
        k = index[0] if index else 0
        return np.random.SeedSequence([int(seed), _OFFSET[name] + int(k)])
    raise KeyError(f"stream {name!r} is an integer seed: use seeds.integer()")


def rng(seed: int, name: str, *index: int) -> np.random.Generator:
    """A generator on stream ``name``."""
    return np.random.default_rng(sequence(seed, name, *index))


def integer(seed: int, name: str, *index: int) -> int:
    """An integer seed on stream ``name`` (for code that takes an int seed: forests, k-means)."""
    _check(seed, name)
    if name in ("forest", "kmeans"):
        return int(seed)
    if name == "bootstrap_cv":
        return int(seed) + int(index[0])
    if name in ("cv_fold", "cv_oob"):
        return int(sequence(seed, name, *index).generate_state(1, dtype=np.uint32)[0])
    return int(sequence(seed, name, *index).generate_state(1)[0])
