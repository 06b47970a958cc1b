"""Prefect flows and the `visiontune` CLI: what runs, in which order, with which params."""
