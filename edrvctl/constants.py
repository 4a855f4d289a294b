"""Names shared by the server and the CLI (kept dependency-free: the CLI imports it at start)."""

PROTOCOLS = ("ocpp1.6", "ocpp2.0.1")

# Every status a StatusNotification can carry (1.6 and 2.0.1 together).
STATUSES = (
    "Available",
    "Preparing",
    "Charging",
    "SuspendedEV",
    "SuspendedEVSE",
    "Finishing",
    "Reserved",
    "Unavailable",
    "Faulted",
    "Occupied",
)

# `-o` of the commands that show stations (edrvctl.cli.output)
FORMATS = ("table", "wide", "plain", "json", "yaml")
