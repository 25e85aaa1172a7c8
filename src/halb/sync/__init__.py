"""Connection-state synchronisation between directors: IPVS's sync daemon
(`ipvsadm --start-daemon master|backup`) for the nft engine.

The master reads the kernel's flow maps (`flows`, `uflows`, `closing`) and
the persistence maps (`p<sid>`) of table inet halb every HALB_SYNC_POLL
seconds (0.2; longer when a read takes more than a third of that), and
multicasts what is new or changed (other server, FIN seen, not sent for 60 s,
or its expiry moved by half its timeout) in numbered datagrams of at most
--sync-maxlen bytes, at most HALB_SYNC_RATE datagrams a second, signed with
HMAC-SHA256 when a key is configured (--sync-key-file), plus a keepalive
every second. An entry travels as (service, VIP:port, client:port, RIP:port,
time left, state), never as a dest mark (marks differ between nodes).

The backup checks each datagram (format, signature, syncid, per-sender
epoch and 64-datagram replay window), maps the entries onto its own marks
through its own table (the same services and real servers, e.g. from the
same ldirectord.cf), and adds them with the time they have left, in one nft
transaction per 50 ms or 4096 entries. Entries for services or real servers
it does not have are counted and dropped.

    codec    the datagram format (pure)
    core     diff, rate budget, validation, mapping (pure, time as an argument)
    daemon   the asyncio shell: sockets, nft (halb.nft.syncio), control socket
"""
