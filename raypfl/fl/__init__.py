"""Federated-learning core: staleness, aggregation, triggers and the server loop (pure numpy, no Ray)."""
