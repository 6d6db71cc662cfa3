"""Test doubles that speak real wire protocols: a local Coinbase Advanced Trade REST server for the real SDK."""
