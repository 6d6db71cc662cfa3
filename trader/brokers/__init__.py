"""Brokers: the simulated exchange (paper) and, later, Coinbase Advanced Trade."""
