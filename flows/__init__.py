"""Prefect flows: one per user-facing job."""
