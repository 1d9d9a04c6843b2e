"""Decisions about which tasks leave Cloud Map. Plain Python: no boto3, no Lambda."""
