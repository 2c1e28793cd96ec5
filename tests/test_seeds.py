"""The named random streams (abzflux.seeds): pinned numbers, so a change of any derivation (which
would change every output of a run) fails here, and distinct streams never coincide."""

from __future__ import annotations

import numpy as np
import pytest

from abzflux import seeds
from abzflux.cv import fold_seed


def test_streams_reproduce_the_studys_numbers():
    # The values the study has always drawn (run.seed = 448), computed with the original inline
    # expressions before they moved into abzflux.seeds.
    assert seeds.integer(448, "cv_fold", 3, 9) == 3006352540
    assert seeds.integer(448, "bootstrap_forest", 2) == 596074320
    assert seeds.integer(448, "bootstrap_cv", 2) == 450
    assert seeds.integer(448, "forest") == 448 and seeds.integer(448, "kmeans") == 448
    assert list(seeds.rng(448, "bootstrap_rows", 1).integers(0, 1000, 3)) == [488, 817, 994]
    assert list(seeds.rng(448, "importance").integers(0, 1000, 3)) == [955, 779, 205]
    assert list(seeds.rng(448, "qrf_draw").integers(0, 1000, 3)) == [947, 699, 182]
    # the same derivations spelled out with numpy
    assert fold_seed(9, 4, 2) == int(np.random.SeedSequence([9, 4, 2]).generate_state(1, dtype=np.uint32)[0])
    assert seeds.integer(5, "bootstrap_forest", 7) == int(np.random.SeedSequence([5, 2007]).generate_state(1)[0])
    # the site_oob streams
    assert seeds.integer(5, "cv_oob", 9) == int(np.random.SeedSequence([5, 6009]).generate_state(1, dtype=np.uint32)[0])
    assert seeds.rng(5, "cv_oob_sites").random() == np.random.default_rng(np.random.SeedSequence([5, 5000])).random()


def test_streams_are_distinct_and_members_differ():
    draws = {
        name: tuple(seeds.rng(448, name, 0).integers(0, 2**31, 4))
        for name in ("importance", "qrf_draw", "bootstrap_rows", "bootstrap_forest")
    }
    assert len(set(draws.values())) == len(draws)
    assert seeds.integer(448, "bootstrap_forest", 0) != seeds.integer(448, "bootstrap_forest", 1)


def test_unknown_stream_or_negative_seed_is_refused():
    with pytest.raises(KeyError, match="unknown random stream 'folds'"):
        seeds.rng(448, "folds")
    with pytest.raises(ValueError, match="non-negative"):
        seeds.integer(-1, "forest")
    with pytest.raises(KeyError, match="integer seed"):
        seeds.sequence(448, "kmeans")
