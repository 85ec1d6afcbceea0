"""Thin Prefect flows: wiring, retries and artifacts around `components` stage functions."""
