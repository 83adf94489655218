"""Prefect front-end: flows that order the pipeline stages."""
