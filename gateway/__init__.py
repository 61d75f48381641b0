"""The reservation gateway: holds on slots, filtered by Redis, decided by PostgreSQL."""

__version__ = "0.1.0"
