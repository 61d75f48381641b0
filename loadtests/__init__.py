"""Load scenarios for the gateway: Locust users that check the gateway's promise themselves (README.md)."""
