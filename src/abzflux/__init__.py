"""abzflux: Arctic-boreal CO2 flux upscaling (after Virkkala et al. 2025)."""

__version__ = "0.1.0"

import warnings as _warnings

# zarr 3 warns on every consolidated-metadata write; the metadata stays readable by xarray.
_warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
