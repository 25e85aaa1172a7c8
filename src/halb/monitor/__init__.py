"""Ganglia-style monitoring (the article's §7): `halb gmond` on every node,
`halb gmetad -c gmetad.conf` on a manager with the web front end.

Pure cores (no socket, no clock: time comes in as an argument):
  gxml   Ganglia's XML dump: produced by gmond, parsed by gmetad
  conf   gmetad.conf
  rrd    round-robin time series (fixed-size archives, consolidation, file format)
  state  gmetad's view of the clusters: merging answers, hosts up/down, source events
  svg    graphs rendered as SVG
  pages  the dashboard's HTML
Thin shells: `collect` (psutil, halb's own state), `gmond` (TCP server),
`gmetad` (pollers, store persistence, aiohttp web server).
"""
