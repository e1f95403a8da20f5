"""psum's hardware generator: Amaranth MAC units that compute exactly what the emulator
assumes (docs/semantics.md), and their Verilog. Does not import torch."""

from hwgen.mac import HWGEN_VERSION, FloatMAC, IntMAC
from hwgen.output import FloatConverter, Requantizer
from hwgen.pieces import Aligner, FloatDecoder, LeadingZeroCounter, Normalizer, Rounder

__all__ = ["FloatMAC", "IntMAC", "Requantizer", "FloatConverter", "HWGEN_VERSION", "LeadingZeroCounter", "Aligner", "Normalizer",
           "FloatDecoder", "Rounder"]
