"""The PMPD engine: ``inference.pmpd`` is the pure core; the rest is its Django shell."""
