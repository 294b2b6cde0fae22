"""tensam: SAM and Deviation-Aware Scaling for tensorized models."""

from tensam import build as _build  # noqa: F401 (registers the ${sig:} resolver of the configs)

__version__ = "0.1.0"
