"""Building blocks of quantflow: plain Python, usable without Prefect."""
