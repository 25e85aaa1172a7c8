"""`halb ipvsadm`: ipvsadm's command language over halb's virtual-server table.

Pure pieces only (no sockets to engines here):
- `parse`: argv -> `Command` (what to do), `Command.ops()` -> `halb.model.Op`s,
  and the `-R` reader (all lines parsed first, one batch of ops).
- `fmt`: ipvsadm's exact listing layouts (-L, -L -n, --stats, --rate,
  --thresholds, --persistent-conn, -c, --timeout) and the `-S` rule writer.
Name look-ups (host names, /etc/services) go through small resolver objects
so that tests can run them without the system resolver.
"""
from halb.ipvsadm.parse import Command, Resolver, parse_argv, parse_restore
from halb.ipvsadm.fmt import Names, format_conns, format_list, format_save, format_timeout

__all__ = ["Command", "Resolver", "parse_argv", "parse_restore", "Names", "format_list",
           "format_save", "format_conns", "format_timeout"]
