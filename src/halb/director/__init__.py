"""halb director: ldirectord-compatible health checking.

config   -- the ldirectord.cf language (pure parser)
state    -- the per-real-server state machine (pure; time passed in)
checks   -- asynchronous health checks (connect, negotiate per service, ping, external)
alerts   -- e-mail alerts over SMTP (or the local sendmail)
daemon   -- the asyncio shell: schedules checks, applies decisions through the engine

Where halb differs from ldirectord (on purpose):
- checks run concurrently (one asyncio task per real server), so `fork=` is
  accepted and has no effect, and a per-virtual `checkinterval` is always
  honoured (ldirectord only does with fork=yes); checktimeout/negotiatetimeout
  and checkinterval may be decimal (0.2);
- `checktype=external-perl` runs the script as an external command (the
  documented convention says such scripts also work as external checks);
- `service=oracle` is refused with a clear error (no Oracle client);
- maintenancedir files are looked up by address (`IP:PORT`, `IP`), not by
  reverse-DNS names;
- a virtual service that disappears from the engine's table (engine
  restarted, table flushed) is re-created within a few seconds with the
  servers that are up; dests edited by hand inside a present service are left
  alone, as ldirectord does;
- additions: `real=... l:LOW u:HIGH` thresholds, `schedflags=`, `sslverify=`
  / `sslcafile=` for TLS checks, `smtp=host:port`.
"""
