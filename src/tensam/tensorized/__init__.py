"""Tensorized modules; each implements the cores protocol of :mod:`tensam.cores`."""

from tensam.tensorized.conv import CPConv2d, TRConv2d, TTConv2d
from tensam.tensorized.cp import CPLinear
from tensam.tensorized.tucker import Tucker

__all__ = ["CPConv2d", "CPLinear", "TRConv2d", "TTConv2d", "Tucker"]
