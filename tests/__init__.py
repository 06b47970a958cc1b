"""The test suite: real images, real DVC repos, a real Prefect server (see conftest.py)."""
