"""Simulated EV chargestations: the OCPP *client* side, for tests, demos and load tests, on
`edrvctl.ocppj.Rpc`.

Public API
----------
``SimStation(endpoint, url, protocol="ocpp1.6" | "ocpp2.0.1", *, connectors=2, vendor, model,
serial, firmware, password, ssl, sessions, meter_interval, session_interval, session_duration,
id_tag, reconnect, backoff_max, silent, heartbeat_interval_override, response_timeout,
open_timeout, reboot_delay, transfer_step, validate, connect_limiter)``

* ``await st.start()`` runs until ``await st.stop()``: connect, BootNotification (retried while
  Pending/Rejected), StatusNotification per connector, heartbeats, optional charging sessions;
  reconnects with jittered exponential backoff. Reset closes the socket and boots again after
  ``reboot_delay`` (reason RemoteReset); GetBaseReport is answered, then NotifyReport parts
  follow; remote start/stop, ChangeAvailability (Scheduled while charging), TriggerMessage,
  Get/ChangeConfiguration and Get/SetVariables act on the simulated device. UpdateFirmware
  sends FirmwareStatusNotification Downloading (an http(s) URL is fetched; DownloadFailed if
  that fails), Downloaded, Installing, Installed, ``transfer_step`` seconds apart, then reboots
  (reason FirmwareUpdate) with the next ``firmware`` version (1.0.0 -> 1.0.1). GetDiagnostics
  and GetLog send Uploading, PUT a small generated file to ``<location>/<file name>``, then
  Uploaded, or UploadFailed/UploadFailure if the PUT failed. SendLocalList (Full, or
  Differential with a newer version, else VersionMismatch) keeps ``local_list`` ({(id tag,
  2.0.1 type or None): idTagInfo / idTokenInfo}) and ``local_list_version`` (0: none), which
  GetLocalListVersion answers.
* ``await st.send(action, payload)`` sends any CALL (the payload a camelCase dict as on the
  wire) and returns the answer's payload dict; raises ``edrvctl.ocppj.RemoteError`` for a
  CALLERROR or an invalid answer, ``InvalidCall`` for a payload that breaks the schema (nothing
  is sent), ``TimeoutError``, and ``ConnectionError`` (``RpcClosed``) at once when the socket
  closes. ``await st.send_raw(text)`` sends one raw websocket frame.
* State: ``connected`` / ``booted`` (``asyncio.Event``), ``registration_status``,
  ``availability`` ({connector or EVSE id: "Operative" | "Inoperative"}, 0 = whole station),
  ``config`` ({key: str}; 2.0.1 keys look like ``"OCPPCommCtrlr.HeartbeatInterval"``,
  ``"DeviceDataCtrlr.ItemsPerMessage[GetReport]"``, ``"Connector@1/1.ConnectorType"``),
  ``transactions`` ({connector: transaction id}), ``stats`` (``Stats``), ``last_error``,
  ``last_status_code`` (HTTP status of the last refused upgrade).
* ``silent=True``: the station answers no CALL at all (our own CALLs still get their answers).
  ``validate`` is kept for compatibility: every payload is validated, both ways, always.

``await run_fleet(url, count, protocol="ocpp1.6" | "ocpp2.0.1" | "mixed", prefix="SIM",
start_index=1, concurrency_of_connects=200, **station_kwargs) -> Fleet`` starts ``count``
stations named ``f"{prefix}{i:05d}"`` (at most ``concurrency_of_connects`` handshakes at once)
and returns at once. ``Fleet``: ``stations``, ``summary() -> FleetSummary``,
``await wait_booted(n=None, timeout=None)``, ``await stop()``.

Layout: station.py (SimStation, Stats: connection, lifecycle, transactions), ocpp16.py and
ocpp201.py (each version's payloads and handler table), device.py (configuration keys,
components and variables, reports), fleet.py (Fleet, FleetSummary, run_fleet).
"""

from edrvctl.simulator.device import utcnow
from edrvctl.simulator.fleet import Fleet, FleetSummary, run_fleet
from edrvctl.simulator.station import PROTOCOLS, SimStation, Stats

__all__ = ["PROTOCOLS", "Fleet", "FleetSummary", "SimStation", "Stats", "run_fleet", "utcnow"]
