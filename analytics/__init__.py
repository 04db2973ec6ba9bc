"""The paper's analyses: ``analytics.stats`` is the pure core; the rest is its Django shell."""
