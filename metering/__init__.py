"""Usage metering and the ledger (arrives with the metering issue)."""
