"""The control API (arrives with the control API issue)."""
