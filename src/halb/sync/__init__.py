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
transaction per batch (what arrived while the previous one ran). Entries
for services or real servers it does not have are counted (unknown_service,
unknown_server) and held until they expire or its table can take them (in
the article's set-up the table appears only at takeover, when ldirectord
starts); a stopping backup daemon hands them to the next master daemon
through <run dir>/sync-held.bin.

Measured in the lab (tests/sync): a new connection is on the backup
12-216 ms after its SYN (median 92 ms; the master reads every 0.2 s);
20,000 entries synced in 1.96 s from the master's start (~10,000/s, the
master's read of the map costing ~25 us per flow); an idle master uses
~3.7 % of a CPU (one `nft -j list table` every 0.2 s).

    codec    the datagram format (pure)
    core     diff, rate budget, validation, mapping (pure, time as an argument)
    daemon   the asyncio shell: sockets, nft (halb.nft.syncio), control socket
"""
