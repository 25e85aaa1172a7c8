"""halb's XDP data plane (`--engine xdp`): Direct Return in the driver.

The eBPF program (bpf/halb_xdp.c) is compiled once with clang (`halb xdp
build`, run by scripts/install-deps) and loaded through the system libbpf
with ctypes (libbpf.py); no compiler and no BCC at run time. engine.py keeps
the configured table and writes it into the program's maps (layout.py: the
byte layout, and the slot tables from the nft engine's planner).

    halb --engine xdp ipvsadm -A -t VIP:80 -s rr
    halb --engine xdp ipvsadm -a -t VIP:80 -r RIP:80 -g
    halb xdp status | flush | refresh | controller | build | check

What the program does: see the comment at the top of bpf/halb_xdp.c.
NAT (-m) and fwmark services, and hosts where XDP cannot load or attach,
go to the nft engine with one log line saying why.
"""
