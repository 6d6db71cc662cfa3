"""Thin Prefect tasks over trader/: retries, timeouts, tags; the work is in trader/."""
