"""edgekit: make medical-imaging CNN classifiers ship-ready for CPU-only edge devices."""

__version__ = "0.1.0"
