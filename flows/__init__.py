"""Prefect wiring for r3: flows, tasks around `r3tasks` functions, artifacts, the CLI."""
