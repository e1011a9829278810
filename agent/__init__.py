"""The composition root: the CLI, transports and the wiring of providers, workflows and pipeline."""
