"""The one order path (trader/orders/path.py)."""
