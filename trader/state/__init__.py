"""Tiered state: HOT (in-process or Redis), WARM (SQLite or PostgreSQL), COLD (local folder or S3)."""
