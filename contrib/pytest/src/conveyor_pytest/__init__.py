"""pytest fixtures and the contract-test kit for Conveyor."""
