"""`halb chaos`: one bounded, seeded command that proves, with numbers, that
the cluster loses nothing under faults.

It builds the article's cluster in the lab (N1 and N2: directors and Apache
real servers; N3 and N4: two more real servers; three clients), runs
heartbeat (sub-second timers, STONITH by the lab's power switch), the
director (the article's port-80 service and a persistent one on 8080) and
connection sync, drives traffic through the VIP all the time (short HTTP
requests at a fixed rate, each answer checked; slow 2 MiB downloads, each
checked by SHA-256; two persistent clients), injects the faults of the
schedule one at a time (waiting for the cluster to be whole again between
them) while a sampler inside each director node records every 10 ms whether
it holds the VIP, stops everything and looks for leftovers, and prints the
verdict: per fault, the requests that failed in its window and the window's
length, broken downloads, persistence violations, time with the VIP on two
nodes or none; in total, failures outside any window. Exit 0 only when
nothing failed outside a window, no download broke, persistence held, the
VIP was never on two nodes, every fault recovered and nothing was left.

core:    the schedule (same seed = same schedule) and the verdict (pure)
run:     the lab, the cluster, the traffic, the faults (root)
sampler: the VIP sampler that runs inside a node
"""
