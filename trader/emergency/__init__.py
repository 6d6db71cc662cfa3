"""The runbooks' emergency procedures (procedures.py) and how their results read (render.py).

A package of its own above the bot, the order path and the runtime it drives: the procedures build a broker and a
ledger from settings, read the bot's switches and send exits through the one order path; nothing below imports it.
"""
