"""GPT-Trader domain: brokers, orders, risk, ledger, strategy. Never imports Prefect."""
