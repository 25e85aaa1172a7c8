"""`halb exporter`: one node's whole state for Prometheus and the dashboard.

    gather   (I/O) the engine's table (open_engine: nft or proxy) and the
             daemons' control sockets (heartbeat, director, sync, proxy),
             read into one plain snapshot (a dict, JSON as it is)
    metrics  (pure) snapshot -> Prometheus text: the table under
             node_exporter's IPVS collector names and labels, the rest as
             halb_* metrics
    server   (aiohttp) /metrics, /api/state (the snapshot), /api/events;
             collects in the background so a scrape serves a ready body
"""
