"""The perpetuals runbook's graceful shutdown (procedure.py) and the operator's stop request (stop.py).

procedure.py sits above the bot, the order path and the emergency procedures it reuses; stop.py is the one file
the bots' stop checks read (deployments/cli/bot.py, flows/bot.py), and imports nothing of the shutdown.
"""
