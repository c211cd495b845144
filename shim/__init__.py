"""The per-container monitor: standard library + msgpack + :mod:`events`, never trio.

Modules, each with one job: :mod:`shim.launch` (double fork, ready report),
:mod:`shim.server` (the selectors loop: socket API, reaping, exec streams, OOM events,
lifecycle), :mod:`shim.logs` (CRI log file with rotation), :mod:`shim.runtime` (the runtime
interface), :mod:`shim.runtime_process` (fork + exec; cgroup limits, tini, setns exec),
:mod:`shim.runtime_oci` (runc/crun behind that interface), :mod:`shim.oci` (config.json,
bundle, the runtime driver), :mod:`shim.cgroups` (limits and the OOM watch),
:mod:`shim.osutil` (prctl, locks, socket path, diagnostics).
"""
