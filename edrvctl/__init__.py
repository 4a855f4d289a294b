"""edrvctl: fleet administration for EV chargestations, with an embedded OCPP central system."""

__version__ = "0.1.0"
