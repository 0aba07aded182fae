"""Channel adapters, one package per channel, registered under ``intake_gateway.adapters``.

Each package holds its channel's protocol code, its adapter(s) and its templates, and re-exports
its adapter classes so an entry point names the package: ``adapters.twilio:TwilioAdapter``.
"""
