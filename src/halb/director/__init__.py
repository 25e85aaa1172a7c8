"""halb director: ldirectord-compatible health checking.

config   -- the ldirectord.cf language (pure parser)
state    -- the per-real-server state machine (pure; time passed in)
checks   -- asynchronous health checks (connect, negotiate per service, ping, external)
alerts   -- e-mail alerts over SMTP
daemon   -- the asyncio shell: schedules checks, applies decisions through the engine
"""
