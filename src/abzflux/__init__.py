"""abzflux: Arctic-boreal CO2 flux upscaling (after Virkkala et al. 2025)."""

__version__ = "0.1.0"
