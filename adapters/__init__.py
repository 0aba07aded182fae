"""Channel adapters, one file per channel, registered under ``intake_gateway.adapters``."""
