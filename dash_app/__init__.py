"""The sensor dashboard: `python -m dash_app`."""
