"""The Prefect adapter: the one layer that speaks to Prefect for tasks/ and flows/, below them and above trader/.

Variables and the switch values they hold (variables.py), the bot's controls read from them (controls.py), the
orchestrator poller that keeps every API call off the bot's cycle (orchestrator.py), artifacts (artifacts.py), run
URLs and run history (runs.py), Secret blocks resolved into plain settings values (secrets.py). trader/ never
imports Prefect (ruff's banned-api, trader/ruff.toml); it receives values from here.
"""
