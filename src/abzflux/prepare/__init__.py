"""``abzflux prepare``: build the study's contract inputs (docs/formats.md) from public products.

A recipe (TOML, docs/prepare.md) names the target grid and, per predictor / zone / fire /
reference layer, its source files and the product's conventions. Readers (``sources`` for
generic rasters, ``products`` for named products, ``vector`` for polygon layers) return a
*source layer* (:mod:`abzflux.prepare.layer`); ``regrid`` puts it on the target grid and
``build`` writes the contract files, streamed and resumable.
"""
