"""Coinbase Advanced Trade's HTTP client (trader/coinbase/http.py), below the broker and the live market data.

Both trader/brokers/coinbase.py (the live broker) and trader/market/coinbase_live.py (public candles and book)
call Coinbase through it; it imports neither.
"""
