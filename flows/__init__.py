"""Thin Prefect flows: wiring, retries and artifacts around `components` stage functions."""

from components.redact import install_log_redaction

install_log_redaction()  # flow and task run logs (console and Prefect API) mask secrets
