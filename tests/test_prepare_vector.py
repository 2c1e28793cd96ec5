"""Zones from polygon layers (abzflux.prepare.vector): polygons of known area on tiny grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import shapely
import xarray as xr

from abzflux.errors import InputError
from abzflux.formats import write_crs
from abzflux.prepare.layer import LayerSpec, check_layer
from abzflux.prepare.vector import east_of, is_vector, rasterise_zone

LAEA = "EPSG:6931"


def target(x0, x1, y0, y1, step):
    """An EPSG:6931 target grid with cell centres x0..x1, y0..y1 (y in the order given)."""
    x = np.arange(x0, x1 + step / 2, step, dtype=float)
    y = np.arange(y0, y1 + np.sign(y1 - y0) * step / 2, np.sign(y1 - y0) * step, dtype=float)
    return write_crs(xr.Dataset(coords={"y": y, "x": x}), LAEA)


def write_layer(path, geoms, fields: dict, crs="EPSG:4326", layer=None, multi=False):
    import pyogrio

    wkb = shapely.to_wkb(np.asarray(geoms, dtype=object))
    names = list(fields)
    data = [np.asarray(fields[n]) for n in names]
    pyogrio.raw.write(path, wkb, data, names, geometry_type="MultiPolygon" if multi else "Polygon", crs=crs,
                      layer=layer, promote_to_multi=multi)  # fmt: skip
    return Path(path)


def zone(name, files, **options):
    files = tuple(Path(f) for f in (files if isinstance(files, list | tuple) else [files]))
    return LayerSpec(name=name, files=files, options=options)


def test_half_cell_polygon_gives_half(tmp_path):
    # cells 100 km: centres -150..150 km; the cell centred (x=-50 km, y=50 km) spans x -100..0, y 0..100
    f = write_layer(tmp_path / "land.gpkg", [shapely.box(-100e3, 0, -50e3, 100e3), shapely.box(0, -200e3, 100e3, -100e3)],
                    {"id": [1, 2]}, crs=LAEA)  # fmt: skip
    for t in (target(-150e3, 150e3, 150e3, -150e3, 100e3), target(-150e3, 150e3, -150e3, 150e3, 100e3)):
        lf = rasterise_zone(zone("land_fraction", f), t)
        check_layer(lf)
        assert lf.sel(x=-50e3, y=50e3).item() == pytest.approx(0.5, abs=1e-9)
        assert lf.sel(x=50e3, y=-150e3).item() == pytest.approx(1.0, abs=1e-9)
        assert float(lf.sum()) == pytest.approx(1.5, abs=1e-9)
        np.testing.assert_array_equal(lf["y"].values, t["y"].values)


def test_biome_majority_and_unknown_classes(tmp_path):
    t = target(-150e3, 150e3, 150e3, -150e3, 100e3)
    geoms = [
        shapely.box(-100e3, 0, -30e3, 100e3),  # 0.7 of cell (-50, 50) boreal
        shapely.box(-30e3, 0, 0, 100e3),  # 0.3 tundra
        shapely.box(0, 0, 20e3, 100e3),  # 0.2 of cell (50, 50) tundra only
        shapely.box(100e3, -200e3, 200e3, -100e3),  # a temperate biome (5): outside the classes
    ]
    f = write_layer(tmp_path / "eco.gpkg", geoms, {"BIOME_NUM": [6.0, 11.0, 11.0, 5.0]}, crs=LAEA)
    b = rasterise_zone(zone("biome", f), t)
    check_layer(b)
    assert b.attrs["flag_meanings"] == "boreal tundra"
    np.testing.assert_array_equal(b.attrs["flag_values"], [1, 2])
    assert b.sel(x=-50e3, y=50e3).item() == 1.0
    assert b.sel(x=50e3, y=50e3).item() == 2.0
    assert np.isnan(b.sel(x=150e3, y=-150e3).item())  # biome 5 left out
    assert int(np.isfinite(b.values).sum()) == 2
    with pytest.raises(InputError, match=r"unknown class\(es\) 5.0 in field 'BIOME_NUM'"):
        rasterise_zone(zone("biome", f, others="error"), t)


def _countries(path):
    box = shapely.box
    geoms = [
        box(-165, 58, -141, 71),  # USA (Alaska)
        box(-141, 55, -60, 80),  # CAN
        box(-55, 60, -20, 83),  # GRL
        shapely.MultiPolygon([box(30, 55, 180, 80), box(-180, 62, -169, 70)]),  # RUS, across 180
        box(88, 47, 118, 52),  # MNG
        box(5, 58, 30, 71),  # NOR
    ]
    return write_layer(path, geoms, {"ADM0_A3": ["USA", "CAN", "GRL", "RUS", "MNG", "NOR"]}, multi=True)


def _value_at(da, lon, lat):
    x, y = pyproj.Transformer.from_crs("EPSG:4326", LAEA, always_xy=True).transform(lon, lat)
    return da.sel(x=x, y=y, method="nearest").item()


def test_region_paper_rule_ural_split_and_greenland(tmp_path):
    f = _countries(tmp_path / "countries.gpkg")
    t = target(-4400e3, 4400e3, 4400e3, -4400e3, 200e3)
    r = rasterise_zone(zone("region", f, field="ADM0_A3", rule="paper"), t)
    check_layer(r)
    assert r.attrs["flag_meanings"] == "alaska canada europe siberia"
    code = {n: i + 1 for i, n in enumerate(r.attrs["flag_meanings"].split())}
    assert _value_at(r, -150, 65) == code["alaska"]
    assert _value_at(r, -110, 65) == code["canada"]
    assert _value_at(r, -40, 75) == code["europe"]  # Greenland is Europe
    assert _value_at(r, 15, 65) == code["europe"]
    assert _value_at(r, 45, 67) == code["europe"]  # Russia west of the Urals
    assert _value_at(r, 75, 67) == code["siberia"]
    assert _value_at(r, -174, 66) == code["siberia"]  # Chukotka, west of 180
    assert _value_at(r, 100, 49.5) == code["siberia"]  # Mongolia
    # every Russian cell: Siberia exactly when its centre is east of 60 E
    xx, yy = np.meshgrid(r["x"].values, r["y"].values)
    lon, lat = pyproj.Transformer.from_crs(LAEA, "EPSG:4326", always_xy=True).transform(xx, yy)
    ru = (lon > 33) & (lon < 170) & (lat > 57) & (lat < 78) & np.isfinite(r.values)
    assert ru.sum() > 50
    np.testing.assert_array_equal(r.values[ru] == code["siberia"], lon[ru] >= 60)
    assert (r.values[ru] == code["europe"]).any() and (r.values[ru] == code["siberia"]).any()
    moved = rasterise_zone(zone("region", f, field="ADM0_A3", ural_lon=80.0), t)
    assert _value_at(moved, 75, 67) == code["europe"]
    assert np.isnan(_value_at(r, -30, 50))  # ocean: no country


def test_region_explicit_map_and_unknown_country(tmp_path):
    f = _countries(tmp_path / "c.gpkg")
    t = target(-4400e3, 4400e3, 4400e3, -4400e3, 400e3)
    m = {"USA": "north_america", "CAN": "north_america", "GRL": "north_america", "RUS": "eurasia", "NOR": "eurasia",
         "MNG": "eurasia"}  # fmt: skip
    r = rasterise_zone(zone("region", f, rule="map", map=m), t)
    assert r.attrs["flag_meanings"] == "eurasia north_america"
    assert _value_at(r, -40, 75) == 2 and _value_at(r, 75, 67) == 1
    del m["NOR"]
    with pytest.raises(InputError, match=r"\[region\] unknown class\(es\) 'NOR' in field 'ADM0_A3'"):
        rasterise_zone(zone("region", f, rule="map", map=m), t)


def test_permafrost_zonation_values_and_mask(tmp_path):
    t = target(-150e3, 150e3, 150e3, -150e3, 100e3)
    geoms = [
        shapely.box(-100e3, 0, 0, 100e3),  # cell (-50, 50): continuous
        shapely.box(0, 0, 50e3, 100e3),  # cell (50, 50): half sporadic ...
        shapely.box(50e3, 0, 100e3, 100e3),  # ... half non-permafrost land ("ld" -> 0)
        shapely.box(-100e3, -100e3, -50e3, 0),  # cell (-50, -50): half isolated, half nothing
    ]
    f = write_layer(tmp_path / "permaice.gpkg", geoms, {"EXTENT": ["C", "S", "ld", "I"]}, crs=LAEA)
    values = {"C": 0.95, "D": 0.7, "S": 0.3, "I": 0.05, "ld": 0.0}
    p = rasterise_zone(zone("permafrost", f, values=values), t)
    check_layer(p)
    assert p.sel(x=-50e3, y=50e3).item() == pytest.approx(0.95, rel=1e-6)
    assert p.sel(x=50e3, y=50e3).item() == pytest.approx(0.15, rel=1e-6)
    assert p.sel(x=-50e3, y=-50e3).item() == pytest.approx(0.05, rel=1e-6)  # per covered area
    assert p.sel(x=150e3, y=-150e3).item() == 0.0
    pc = rasterise_zone(zone("permafrost", f, values=values, per="cell"), t)
    assert pc.sel(x=-50e3, y=-50e3).item() == pytest.approx(0.025, rel=1e-6)
    mask = rasterise_zone(zone("permafrost", f, values=values, mode="mask"), t)
    assert mask.sel(x=-50e3, y=50e3).item() == 1.0 and mask.sel(x=50e3, y=50e3).item() == 1.0
    assert float(mask.sum()) == 3.0
    with pytest.raises(InputError, match=r"unknown class\(es\) 'ld'"):
        rasterise_zone(zone("permafrost", f), t)  # the IPA defaults do not name 'ld'
    ok = rasterise_zone(zone("permafrost", f, ignore=["ld"]), t)
    assert ok.sel(x=50e3, y=50e3).item() == pytest.approx(0.3, rel=1e-6)


def test_land_fraction_from_a_finer_raster(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    t = target(-50e3, 50e3, 50e3, -50e3, 100e3)  # 2 x 2 cells of 100 km, edges -100..100 km
    codes = np.full((8, 8), 70, dtype=np.uint8)  # 25-km cells: 4 x 4 per target cell
    codes[0, 0] = codes[1, 1] = 210  # two water cells in the top-left target cell
    codes[0, 2] = 220  # one ice cell there too
    codes[4:, 4:] = 255  # the bottom-right target cell: no data
    f = tmp_path / "lc.tif"
    with rasterio.open(f, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8", crs=LAEA,
                       transform=from_origin(-100e3, 100e3, 25e3, 25e3), nodata=255) as dst:  # fmt: skip
        dst.write(codes[None])
    spec = LayerSpec(name="land_fraction", files=(f,), options={"water_values": [210, 220]})
    assert not is_vector(spec)
    lf = rasterise_zone(spec, t)
    check_layer(lf)
    assert lf.sel(x=-50e3, y=50e3).item() == pytest.approx(13 / 16)
    assert lf.sel(x=50e3, y=50e3).item() == pytest.approx(1.0)
    assert lf.sel(x=50e3, y=-50e3).item() == pytest.approx(0.0)  # no data counts as not land


def test_vector_errors_name_file_and_field(tmp_path):
    t = target(-150e3, 150e3, 150e3, -150e3, 100e3)
    with pytest.raises(InputError, match="file not found"):
        rasterise_zone(zone("biome", tmp_path / "nope.gpkg"), t)
    f = write_layer(tmp_path / "eco.gpkg", [shapely.box(-100e3, 0, 0, 100e3)], {"BIOME": [6]}, crs=LAEA)
    with pytest.raises(
        InputError, match=r"eco.gpkg: \[biome\] no field 'BIOME_NUM'.*options.field = one of \['BIOME'\]"
    ):
        rasterise_zone(zone("biome", f), t)
    far = write_layer(tmp_path / "south.gpkg", [shapely.box(10, -40, 20, -30)], {"BIOME_NUM": [6]})
    with pytest.raises(InputError, match="no polygon overlaps the target grid"):
        rasterise_zone(zone("biome", far), t)
    with pytest.warns(UserWarning, match="'crs' was not provided"):
        nocrs = write_layer(tmp_path / "nocrs.shp", [shapely.box(-1, 80, 1, 89)], {"BIOME_NUM": [6]}, crs=None)
    with pytest.raises(InputError, match=r"nocrs.shp: \[biome\] no CRS"):
        rasterise_zone(zone("biome", nocrs), t)
    with pytest.raises(InputError, match=r"nocrs.shp: \[biome\] unknown CRS 'EPSG:999999'"):
        rasterise_zone(LayerSpec(name="biome", files=(nocrs,), crs="EPSG:999999"), t)
    ok = rasterise_zone(LayerSpec(name="biome", files=(nocrs,), crs="EPSG:4326"), t)
    assert np.isfinite(ok.values).any()
    with pytest.raises(InputError, match="no zone 'soil'"):
        rasterise_zone(zone("soil", f), t)


def test_east_of_the_urals():
    np.testing.assert_array_equal(east_of(np.array([59.9, 60.0, 179.0, -175.0, -20.0, 20.0]), 60.0),
                                  [False, True, True, True, False, False])  # fmt: skip


def test_invalid_polygon_and_layers(tmp_path):
    t = target(-150e3, 150e3, 150e3, -150e3, 100e3)
    # a bow-tie over the cell (-50, 50): two triangles of a quarter cell each once repaired
    bow = shapely.Polygon([(-100e3, 0), (0, 100e3), (0, 0), (-100e3, 100e3), (-100e3, 0)])
    assert not bow.is_valid
    f = tmp_path / "two.gpkg"
    write_layer(f, [bow], {"id": [1]}, crs=LAEA, layer="land")
    write_layer(f, [shapely.box(0, 0, 100e3, 100e3)], {"id": [2]}, crs=LAEA, layer="other")
    with pytest.raises(InputError, match=r"2 layers and no options.layer"):
        rasterise_zone(zone("land_fraction", f), t)
    lf = rasterise_zone(zone("land_fraction", f, layer="land"), t)
    assert lf.sel(x=-50e3, y=50e3).item() == pytest.approx(0.5, abs=1e-9)
    assert float(lf.sum()) == pytest.approx(0.5, abs=1e-9)
    with pytest.raises(InputError, match="no layer 'sea'"):
        rasterise_zone(zone("land_fraction", f, layer="sea"), t)
