"""Saved forests mapped read-only and shared by processes (abzflux.arrayfile, FluxForest.save/load,
the upscaler's per-use loads, the runner's per-stage memory record)."""

from __future__ import annotations

import io
import json
import mmap
import struct
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

import abzflux.upscale as up
from abzflux import arrayfile
from abzflux._rf import LevelForest
from abzflux.forest import FluxForest
from abzflux.predictors import PREDICTOR_NAMES
from abzflux.runner import PeakRSS


def make_X(n: int, seed: int, veg) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols = {c: rng.uniform(0.0, 1.0, n) for c in PREDICTOR_NAMES}
    cols |= {"month": rng.integers(1, 13, n), "veg_type": rng.choice(list(veg), n), "srad": rng.uniform(0, 300, n)}
    return pd.DataFrame(cols)[list(PREDICTOR_NAMES)]


def _is_mapped_view(a: np.ndarray) -> bool:
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return isinstance(b.obj if isinstance(b, memoryview) else b, mmap.mmap)


def _forest(central="mean", categorical=("month", "veg_type"), n=300, seed=5):
    X = make_X(n, seed=seed, veg=[21, 90, 120])
    y = X.srad + 30 * (X.veg_type == 90) + 5 * X.month
    if not categorical:
        X = X.drop(columns=["month", "veg_type"])
    return FluxForest(n_estimators=30, central=central, categorical=categorical, random_state=7).fit(X, y), X


def _big(X, k=8):  # >= 1024 rows: the level-layout path
    return X.sample(len(X) * k, replace=True, random_state=1).reset_index(drop=True)


def _old_save(m: FluxForest, path) -> None:
    """FluxForest.save of abzflux <= f02310f: one compressed npz, packed arrays only."""
    meta = {
        "params": m.get_params() | {"categorical": list(m.categorical)},
        "feature_names": list(m.feature_names_),
        "mtry": int(m.mtry_),
        "levels": {c: [v.item() if isinstance(v, np.generic) else v for v in lv] for c, lv in m.levels_.items()},
    }
    arrays = m.forest_.to_arrays()
    arrays.pop("wcount")
    if m.leaf_draw_ is not None:
        arrays["leaf_draw"] = m.leaf_draw_
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


@pytest.mark.parametrize(
    "central, categorical", [("mean", ("month", "veg_type")), ("mean", ()), ("qrf_median", ("month", "veg_type"))]
)
def test_mapped_forest_predicts_identically(tmp_path, central, categorical):
    m, X = _forest(central, categorical)
    m.save(tmp_path / "f.npz")
    back = FluxForest.load(tmp_path / "f.npz")
    assert back.mapped and not m.mapped
    big = _big(X)
    for rows in (X.iloc[:50], big):  # the node-record path and the level-layout path
        np.testing.assert_array_equal(back.predict(rows), m.predict(rows))
    if central == "qrf_median":
        np.testing.assert_array_equal(back.predict_quantiles(big), m.predict_quantiles(big))
        assert back._level is None  # no level layout stored for a quantile forest
    else:
        # the stored layout is used as it is: nothing rebuilt, every array a read-only view of the file
        lv = back._level
        assert lv is not None and not m.mapped
        for k, a in lv.to_arrays().items():
            if k != "has_cat":
                assert not a.flags.writeable, k
                assert _is_mapped_view(a), k
        assert lv.has_cat is bool(categorical)
    assert not back.forest_.nodes.flags.writeable and _is_mapped_view(back.forest_.nodes)


def test_compressed_npz_of_earlier_versions_still_loads(tmp_path):
    m, X = _forest()
    _old_save(m, tmp_path / "old.npz")
    back = FluxForest.load(tmp_path / "old.npz")
    assert not back.mapped and back._level is None
    assert back.known_levels("veg_type") == [21, 90, 120]
    big = _big(X)
    np.testing.assert_array_equal(back.predict(big), m.predict(big))
    np.testing.assert_array_equal(back.predict(X.iloc[:10]), m.predict(X.iloc[:10]))
    assert not arrayfile.mappable(tmp_path / "old.npz")


def test_file_is_an_aligned_uncompressed_npz_and_deterministic(tmp_path):
    m, _ = _forest()
    m.save(tmp_path / "a.npz")
    m.save(tmp_path / "b.npz")
    raw = (tmp_path / "a.npz").read_bytes()
    assert raw == (tmp_path / "b.npz").read_bytes()  # same forest, same bytes (run digests)
    with np.load(tmp_path / "a.npz") as z:  # any numpy reads it
        np.testing.assert_array_equal(z["nodes"], m.forest_.nodes)
        assert json.loads(str(z["meta"]))["mtry"] == m.mtry_
    with zipfile.ZipFile(tmp_path / "a.npz") as zf:
        for zi in zf.infolist():
            assert zi.compress_type == zipfile.ZIP_STORED
            h = zi.header_offset
            n_name, n_extra = struct.unpack("<HH", raw[h + 26 : h + 30])
            start = h + 30 + n_name + n_extra
            f = io.BytesIO(raw[start : start + 4096])
            np.lib.format.read_magic(f)
            np.lib.format.read_array_header_1_0(f)
            assert (start + f.tell()) % 64 == 0, zi.filename


def test_arrayfile_round_trip_of_odd_shapes(tmp_path):
    arrays = {
        "empty": np.zeros((0, 3)),
        "scalar": np.array(3.5),
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "u8": np.arange(7, dtype=np.uint8),
        "rec": np.zeros(3, [("a", "<f8"), ("b", "<i4")]),
        "text": np.array("héllo"),
    }
    arrayfile.write(tmp_path / "x.npz", arrays)
    back, mapped = arrayfile.read(tmp_path / "x.npz")
    assert mapped
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape
        np.testing.assert_array_equal(back[k], a)
    assert str(back["text"]) == "héllo"


def test_atomic_write_leaves_no_partial_file(tmp_path):
    m, X = _forest()
    path = tmp_path / "f.npz"
    m.save(path)
    before = path.read_bytes()
    with pytest.raises(ValueError):  # object arrays are refused half-way through the file
        arrayfile.write(path, {"a": np.arange(1000.0), "b": np.array([object()], dtype=object)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npz"]  # old file intact, no .tmp
    assert path.read_bytes() == before
    with pytest.raises(ValueError):
        arrayfile.write(tmp_path / "new.npz", {"b": np.array([object()], dtype=object)})
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "new.npz.tmp").exists()


def test_replacing_a_mapped_file_leaves_the_mapping_intact(tmp_path):
    m, X = _forest(seed=5)
    m2, _ = _forest(seed=6)
    path = tmp_path / "f.npz"
    m.save(path)
    back = FluxForest.load(path)
    m2.save(path)  # rename over the mapped file: the old inode stays mapped
    big = _big(X)
    np.testing.assert_array_equal(back.predict(big), m.predict(big))
    np.testing.assert_array_equal(FluxForest.load(path).predict(big), m2.predict(big))


def test_level_forest_arrays_cover_every_attribute():
    m, X = _forest()
    lv = LevelForest.from_packed(m.forest_)
    back = LevelForest.from_arrays(lv.to_arrays())
    assert set(vars(back)) == set(vars(lv))  # an attribute __init__ derives must be stored too
    big = m._matrix(_big(X))
    np.testing.assert_array_equal(back.predict(big), lv.predict(big))
    with pytest.raises(KeyError, match="stages"):
        LevelForest.from_arrays({k: v for k, v in lv.to_arrays().items() if k != "stages"})


def test_worker_load_maps_afresh_and_caches_old_files(tmp_path):
    m, X = _forest()
    m.save(tmp_path / "new.npz")
    _old_save(m, tmp_path / "old.npz")
    a, b = up._load(str(tmp_path / "new.npz")), up._load(str(tmp_path / "new.npz"))
    assert a is not b and a.mapped  # opened per use, unmapped when dropped
    assert not a._level.thr.flags.writeable and not a.forest_.value.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a._level.value[0] = 1.0
    c, d = up._load(str(tmp_path / "old.npz")), up._load(str(tmp_path / "old.npz"))
    assert c is d and not c.mapped  # decompressed once per process and kept
    big = _big(X)
    np.testing.assert_array_equal(a.predict(big), c.predict(big))


def test_peak_rss_sees_a_temporary_allocation():
    with PeakRSS(interval=0.01) as mem:
        base = mem.peak_mb
        a = np.ones(40_000_000)  # 320 MB, touched
        time.sleep(0.1)
        del a
    rec = mem.record()
    assert base is not None and rec["peak_rss_mb"] - base > 250
    assert rec["maxrss_mb"] >= rec["peak_rss_mb"] - 1


def test_feature_names_survive(tmp_path):
    m, _ = _forest()
    m.save(tmp_path / "f.npz")
    assert FluxForest.load(tmp_path / "f.npz").feature_names_ == list(PREDICTOR_NAMES)


def test_a_stored_layout_of_another_version_is_rebuilt(tmp_path, monkeypatch):
    m, X = _forest()
    m.save(tmp_path / "f.npz")
    monkeypatch.setattr(LevelForest, "LAYOUT", LevelForest.LAYOUT + 1)  # the layout code changed since
    back = FluxForest.load(tmp_path / "f.npz")
    assert back.mapped and back._level is None  # the stored layout is ignored ...
    big = _big(X)
    np.testing.assert_array_equal(back.predict(big), m.predict(big))  # ... and rebuilt from the nodes
    assert back._level is not None and back._level.feat.flags.writeable
