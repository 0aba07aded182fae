"""Test kit shipped with the gateway: contract suites, local fakes of provider APIs, and helpers
that find real servers. Integrators import it to test their own adapters and publishers."""
