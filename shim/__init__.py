"""The per-container monitor: standard library + msgpack + :mod:`events`, never trio.

Modules, each with one job: :mod:`shim.launch` (double fork, ready report),
:mod:`shim.server` (the selectors loop: socket API, reaping, lifecycle), :mod:`shim.logs` (CRI log
file with rotation), :mod:`shim.runtime` (the runtime interface), :mod:`shim.runtime_process`
(fork + exec), :mod:`shim.osutil` (prctl, locks, socket path, diagnostics).
"""
