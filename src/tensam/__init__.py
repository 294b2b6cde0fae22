"""tensam: SAM and Deviation-Aware Scaling for tensorized models."""

__version__ = "0.1.0"
