"""halb heartbeat: membership, authenticated beats and failover (the article's §4-§5).

    halb [--node N1] heartbeat -c HA_DIR run      # foreground daemon (HA_DIR: ha.cf, authkeys, haresources)
    halb [--node N1] heartbeat status | nodes | standby | takeover | reload | cleanup GROUP
    halb [--node N1] heartbeat -c HA_DIR release  # stop this node's resources (no daemon running)

Layers (pure cores, thin shell):
- config.py      ha.cf (read in order, as heartbeat), authkeys (mode 0600, crc refused on UDP
                 unless `halb_allow_crc on`), haresources (groups, `R::a::b`, bare IP = IPaddr,
                 `IPAddr2` spelling, `\\` continuation). ConfigError(file, line, msg) everywhere.
- packet.py      signed beat packets (HMAC-MD5/SHA1/SHA256 or CRC32), per-start generation +
                 sequence; ReplayGuard drops replayed / out-of-order / old-generation packets.
- membership.py  up / late (warntime) / dead (deadtime) per node and per link, initdead grace,
                 ping nodes (deadping), and "our own loop ran late" (no peer judged on our stall).
- ownership.py   who should hold each group: ipfail ping score, takeover/standby claims,
                 auto_failback on|off|legacy (legacy behaves as on), preferred node; fencing targets.
- recovery.py    what follows a failed resource: restart, then move after migration-threshold
                 failures (the node banned until cleanup); a failed stop keeps the group held:
                 a peer with STONITH resets the node, else the group is blocked until cleanup.
- transport.py   bcast / mcast / ucast UDP sockets bound to their interface; ICMP for ping nodes.
- beatloop.py    the beat path on its own real-time thread: plain sockets, one select() wake-up per
                 tick (next beat, next tick or next deadline), beats judged on the kernel's arrival
                 time stamps, membership ticks; hands events to the event loop.
- lane.py        beat lanes: with sub-second timers and `realtime on`, a small process pinned to
                 another CPU sends every other beat (per-lane sequence, numbered bodies), on a
                 lease from the beat thread's stamps: a held vCPU or paused daemon is not a dead
                 node, a hung one still is (lease + deadtime). `halb_beat_lanes 1` turns it off.
- daemon.py      the asyncio shell: locked pid file (RUN_DIR/heartbeat.pid) before anything,
                 decisions, STONITH, resource monitoring, SIGHUP reload, control socket
                 (RUN_DIR/heartbeat.sock), logs in heartbeat's words, clean shutdown (resources
                 released in reverse order, shutdown notice so peers take over at once).
- worker.py      resource agents run in a helper process, never in the beat loop's interpreter;
                 requests numbered, a timed-out one fails and the helper is restarted.
- watchdog.py    `watchdog DEVICE`: the device when present, else a death-watch process that
                 releases the node's resources when the daemon dies or hangs.
- stonith.py     `stonith_host HOST|* external CMD ARGS` (CMD ARGS reset NODE; 0 = off) and
                 `stonith_host * labpower LABNAME [LABROOT]` (the lab's power switch).

Differences from heartbeat 3 worth knowing:
- halb's own packet format (not interoperable with heartbeat nodes); node identity by name.
- serial links, CRM/pacemaker, autojoin are not supported (serial/baud: warning; crm: error).
- `realtime on` runs every thread of the daemon SCHED_FIFO (the beat thread one level above the
  others) and locks its memory as it is touched (mlockall MCL_ONFAULT); children
  (scripts, the director, respawned programs) start at normal priority.
- A node starting while its resources still run (a crash left the VIP on its interface)
  stops them before joining.
- Resources held are monitored (`halb_monitor_interval`, default 5 s; heartbeat 1 did not);
  `halb_agent_timeout` bounds one agent operation. Both are halb's additions.
- `halb_allow_crc on` is halb's addition (crc keys are otherwise refused on UDP links).
- `halb_beat_lanes auto|1..4` is halb's addition: how many processes send the beats (auto: 2
  with `realtime on`, keepalive < 1 s and two CPUs or more; else 1).
"""
