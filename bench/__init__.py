"""The benchmark harness (issue 8): the embedded stack, the floors of this machine, and the scenarios."""
