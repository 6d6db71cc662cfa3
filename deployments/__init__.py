"""How the product runs: the perps-bot CLI, the embedded stack (perps-bot up), serving prefect.yaml."""
