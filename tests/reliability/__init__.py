"""The reliability suite: crash safety, source faults, flapping, bad input, security checks."""
