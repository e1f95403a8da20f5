"""The end-to-end study: sweeps, minimal-bits search, hardware cost, report."""
