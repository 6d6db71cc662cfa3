"""Prefect flows composed of tasks: each reads like the runbook section it automates."""
