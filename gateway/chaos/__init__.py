"""Fault injection: a TCP fault proxy, a history checker and the chaos soak."""
