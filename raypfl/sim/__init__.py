"""Simulated devices and network: heterogeneity profiles and the virtual clock (pure, no Ray)."""
