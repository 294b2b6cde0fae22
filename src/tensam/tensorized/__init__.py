"""Tensorized modules; each implements the cores protocol of :mod:`tensam.cores`."""

from tensam.tensorized.cp import CPLinear
from tensam.tensorized.tucker import Tucker

__all__ = ["CPLinear", "Tucker"]
