"""One module per scenario, and `common` for what they share. loadtests/locustfile.py exposes their users."""
