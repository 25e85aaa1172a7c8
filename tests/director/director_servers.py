"""Real servers for the director's check tests, each on 127.0.0.1 and a free
port, started in a private directory and always stopped (context managers).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


# the article's ldirectord.cf (§5.3): the seed file when it is there, else this copy
SEED = Path("/work/shared/seed/configs/ldirectord.cf")
ARTICLE = """\
checktimeout=10
checkinterval=10
emailalert="root"
emailalertfreq=0
emailalertstatus=stopping

virtual=$VIP:80
\t# each node is asked for testcluster.html
\tchecktype=negotiate
\treal=$RIP1:80 gate 1 "testcluster.html", "N1"
\treal=$RIP2:80 gate 1 "testcluster.html", "N2"
\tservice=http
\tcheckport=80
\tscheduler=rr
"""


def wait_for(pred, timeout=20.0, step=0.05, what="condition"):
    """pred()'s first true value, polled every `step` s for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def read_to_end(s: socket.socket, bufsize: int = 4096) -> bytes:
    """Everything the peer sends until it closes."""
    data = b""
    while True:
        b = s.recv(bufsize)
        if not b:
            return data
        data += b


@contextlib.contextmanager
def world_dir(prefix: str):
    """A private directory under /tmp that daemons running as other users
    (Debian-exim, nobody, dovenull) can reach (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix=f"halb-{prefix}-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        # a daemon's last child (e.g. an exim delivery) may still write a log
        # line just after the stop: remove again until the directory is gone
        for _ in range(10):
            shutil.rmtree(d, ignore_errors=True)
            time.sleep(0.1)
            if not d.exists():
                break


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int, kind=socket.SOCK_STREAM) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, kind)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def wait_tcp(port: int, timeout: float = 20, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            extra = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}: {extra}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def popen(argv, log: Path, **kw) -> subprocess.Popen:
    fh = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, **kw)
    finally:
        fh.close()


def make_cert(d: Path, name: str) -> tuple[Path, Path]:
    key, crt = d / f"{name}.key", d / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    return crt, key


@contextlib.contextmanager
def nginx(d: Path, body: str = "site plain", tls: bool = True):
    """nginx with: http on .http (/ -> body, /missing -> 404, /moved -> 302 /),
    https on .https with SNI sites a.example ("site A") and b.example
    ("site B"), and a forward-proxy port .proxy (absolute URIs -> http)."""
    d.mkdir(parents=True, exist_ok=True)
    http, https, proxy = free_ports(3)
    tls_conf = ""
    certs = {}
    if tls:
        for n in ("a.example", "b.example"):
            certs[n] = make_cert(d, n)
        tls_conf = "".join(f"""
    server {{ listen 127.0.0.1:{https} ssl; server_name {n};
        ssl_certificate {certs[n][0]}; ssl_certificate_key {certs[n][1]};
        location / {{ return 200 "site {n[0].upper()}\\n"; }} }}""" for n in ("a.example", "b.example"))
    conf = d / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
    uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
    server {{ listen 127.0.0.1:{http};
        location = / {{ return 200 "{body}\\n"; }}
        location = /missing {{ return 404; }}
        location = /moved {{ return 302 /; }} }}
    server {{ listen 127.0.0.1:{proxy};
        location / {{ proxy_pass http://127.0.0.1:{http}; }} }}{tls_conf}
}}
""")
    log = d / "nginx.out"
    proc = popen(["nginx", "-c", str(conf), "-p", str(d)], log)
    try:
        wait_tcp(http, proc=proc, log=d / "error.log")
        if tls:
            wait_tcp(https, proc=proc, log=d / "error.log")
        yield type("Nginx", (), {"http": http, "https": https, "proxy": proxy, "proc": proc,
                                 "certs": certs, "dir": d})
    finally:
        stop(proc)


@contextlib.contextmanager
def exim(_unused: Path | None = None):
    """exim4 accepting any mail on .port and appending it to .inbox."""
    with world_dir("exim") as d, _exim(d) as x:
        yield x


@contextlib.contextmanager
def _exim(d: Path):
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o1777)
    port = free_port()
    conf = d / "exim.conf"
    conf.write_text(f"""
primary_hostname = halb-test
spool_directory = {d}/spool
log_file_path = {d}/%slog
pid_file_path = {d}/exim.pid
daemon_smtp_ports = {port}
local_interfaces = 127.0.0.1
never_users =
acl_smtp_rcpt = acl_check_rcpt
begin acl
acl_check_rcpt:
  accept
begin routers
all:
  driver = accept
  transport = tofile
begin transports
tofile:
  driver = appendfile
  file = {d}/mail/inbox
  user = Debian-exim
  create_directory
  envelope_to_add
begin retry
* * F,1m,1m
""")
    os.chmod(conf, 0o644)
    proc = popen(["exim4", "-C", str(conf), "-bdf", "-oX", str(port), "-odi"], d / "exim.out")
    try:
        wait_tcp(port, proc=proc, log=d / "exim.out")
        yield type("Exim", (), {"port": port, "inbox": d / "mail" / "inbox", "proc": proc, "dir": d})
    finally:
        stop(proc)


@contextlib.contextmanager
def vsftpd(d: Path, files: dict[str, str]):
    """vsftpd with anonymous read access to `files` on .port."""
    d.mkdir(parents=True, exist_ok=True)
    root = d / "ftproot"
    root.mkdir(exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    empty = d / "empty"
    empty.mkdir(exist_ok=True)
    os.chmod(root, 0o755)
    os.chmod(empty, 0o755)
    port = free_port()
    conf = d / "vsftpd.conf"
    conf.write_text(f"""listen=YES
listen_address=127.0.0.1
listen_port={port}
background=NO
anonymous_enable=YES
anon_root={root}
no_anon_password=YES
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
secure_chroot_dir={empty}
xferlog_enable=NO
seccomp_sandbox=NO
connect_from_port_20=NO
""")
    os.chmod(conf, 0o600)
    proc = popen(["vsftpd", str(conf)], d / "vsftpd.out")
    try:
        wait_tcp(port, proc=proc, log=d / "vsftpd.out")
        yield type("Ftp", (), {"port": port, "proc": proc})
    finally:
        stop(proc)


@contextlib.contextmanager
def dnsmasq(d: Path, records: dict[str, str]):
    """dnsmasq answering A (and PTR) records for `records` on .port (UDP and TCP)."""
    d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = ["dnsmasq", "-k", "--conf-file=/dev/null", f"--port={port}", "--listen-address=127.0.0.1",
            "--bind-interfaces", "--no-resolv", "--no-hosts", f"--pid-file={d}/dnsmasq.pid", "--log-facility=-"]
    for name, addr in records.items():
        argv.append(f"--host-record={name},{addr}")
    proc = popen(argv, d / "dnsmasq.out")
    try:
        wait_tcp(port, proc=proc, log=d / "dnsmasq.out")
        yield type("Dns", (), {"port": port, "proc": proc})
    finally:
        stop(proc)


def postgres_bindir() -> Path | None:
    """Where initdb/postgres live (Debian keeps them off PATH)."""
    found = shutil.which("postgres")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (cand / "postgres").exists() and (cand / "initdb").exists():
            return cand
    return None


def _as_nobody(argv: list[str]) -> list[str]:
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"] + argv


@contextlib.contextmanager
def postgres(_unused: Path | None = None, user: str = "halb", password: str = "s3cret"):
    """PostgreSQL (scram auth) on .port with a table `health(ok)` holding one row."""
    with world_dir("pg") as d, _postgres(d, user, password) as x:
        yield x


@contextlib.contextmanager
def _postgres(d: Path, user: str, password: str):
    bindir = postgres_bindir()
    d = d / "pg"
    d.mkdir()
    os.chown(d, 65534, 65534)
    data = d / "data"
    pw = d / "pw"
    pw.write_text(password + "\n")
    os.chown(pw, 65534, 65534)
    subprocess.run(_as_nobody([str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=scram-sha-256",
                               f"--pwfile={pw}", "--no-sync", "-E", "UTF8"]),
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    proc = popen(_as_nobody([str(bindir / "postgres"), "-D", str(data), "-k", str(d), "-p", str(port),
                             "-h", "127.0.0.1", "-c", "fsync=off"]), d / "pg.out")
    try:
        wait_tcp(port, timeout=60, proc=proc, log=d / "pg.out")
        import pg8000.native
        deadline = time.monotonic() + 30
        while True:
            try:
                c = pg8000.native.Connection(user, host="127.0.0.1", port=port, password=password,
                                             database="postgres")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        c.run("CREATE TABLE health (ok int)")
        c.run("INSERT INTO health VALUES (1)")
        c.close()
        yield type("Pg", (), {"port": port, "user": user, "password": password, "proc": proc})
    finally:
        stop(proc)


@contextlib.contextmanager
def dovecot(_unused: Path | None = None, user: str = "alice", password: str = "wonder"):
    """dovecot with imap/imaps/pop3/pop3s on .imap/.imaps/.pop3/.pop3s; one user."""
    with world_dir("mail") as d, _dovecot(d, user, password) as x:
        yield x


@contextlib.contextmanager
def _dovecot(d: Path, user: str, password: str):
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    crt, key = make_cert(d, "mail.example")
    imap, imaps, pop3, pop3s = free_ports(4)
    (d / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
    home = d / "home"
    home.mkdir(exist_ok=True)
    os.chown(home, 65534, 65534)
    conf = d / "dovecot.conf"
    conf.write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{crt}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={home}/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
""")
    proc = popen(["dovecot", "-F", "-c", str(conf)], d / "dovecot.out")
    try:
        for p in (imap, imaps, pop3, pop3s):
            wait_tcp(p, proc=proc, log=d / "dovecot.out")
        yield type("Dovecot", (), {"imap": imap, "imaps": imaps, "pop3": pop3, "pop3s": pop3s,
                                   "user": user, "password": password, "proc": proc})
    finally:
        stop(proc)


class NginxSite:
    """One nginx serving `body` at / on 127.0.0.1:port, that can be stopped
    and started again on the same port (a back end that dies and returns)."""

    def __init__(self, d: Path, body: str, port: int | None = None):
        self.d = d
        d.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.body = body
        self.proc: subprocess.Popen | None = None
        self.conf = d / "nginx.conf"
        self.conf.write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/pt; fastcgi_temp_path {d}/ft;
    uwsgi_temp_path {d}/ut; scgi_temp_path {d}/st;
    server {{ listen 127.0.0.1:{self.port} reuseport;
        location / {{ return 200 "{body}\\n"; }} }}
}}
""")

    def start(self) -> "NginxSite":
        self.proc = popen(["nginx", "-c", str(self.conf), "-p", str(self.d)], self.d / "nginx.out")
        wait_tcp(self.port, proc=self.proc, log=self.d / "error.log")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def mariadb(user: str = "halb", password: str = "s3cret", database: str = "shop"):
    """MariaDB on 127.0.0.1:.port; `user`/`password` may read `database`,
    which has a table health(ok) with one row."""
    with world_dir("mysql") as d:
        data = d / "data"
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=180)
        port = free_port()
        sock = d / "mysql.sock"
        proc = popen(["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
                      "--bind-address=127.0.0.1", "--user=root", f"--pid-file={d}/mysqld.pid",
                      "--skip-log-bin", "--innodb-buffer-pool-size=16M", f"--log-error={d}/error.log"],
                     d / "mysqld.out")
        try:
            wait_tcp(port, timeout=60, proc=proc, log=d / "error.log")
            sql = (f"CREATE DATABASE {database}; CREATE TABLE {database}.health (ok INT); "
                   f"INSERT INTO {database}.health VALUES (1); "
                   f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{password}'; "
                   f"GRANT SELECT ON {database}.* TO '{user}'@'127.0.0.1';")
            subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", sql],
                           check=True, capture_output=True, timeout=60)
            yield type("MariaDB", (), {"port": port, "user": user, "password": password,
                                       "database": database, "proc": proc})
        finally:
            stop(proc, timeout=30)


@contextlib.contextmanager
def slapd(suffix: str = "dc=example,dc=org", password: str = "secret"):
    """OpenLDAP slapd on ldap://127.0.0.1:.port and ldaps://127.0.0.1:.ldaps
    with the base entry `suffix` and rootdn cn=admin,<suffix>."""
    with world_dir("ldap") as d:
        crt, key = make_cert(d, "ldap.example")
        db = d / "db"
        db.mkdir()
        port, ldaps = free_ports(2)
        conf = d / "slapd.conf"
        conf.write_text(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {d}/slapd.pid
TLSCertificateFile {crt}
TLSCertificateKeyFile {key}
database mdb
maxsize 10485760
suffix "{suffix}"
rootdn "cn=admin,{suffix}"
rootpw {password}
directory {db}
""")
        proc = popen(["slapd", "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/ ldaps://127.0.0.1:{ldaps}/",
                      "-d", "0"], d / "slapd.out")
        try:
            wait_tcp(port, proc=proc, log=d / "slapd.out")
            wait_tcp(ldaps, proc=proc, log=d / "slapd.out")
            dc = suffix.split(",")[0].split("=")[1]
            ldif = f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: {dc}\n"
            subprocess.run(["ldapadd", "-x", "-H", f"ldap://127.0.0.1:{port}", "-D", f"cn=admin,{suffix}",
                            "-w", password], input=ldif, text=True, check=True, capture_output=True, timeout=30)
            yield type("Slapd", (), {"port": port, "ldaps": ldaps, "suffix": suffix,
                                     "rootdn": f"cn=admin,{suffix}", "password": password, "proc": proc})
        finally:
            stop(proc)


@contextlib.contextmanager
def freeradius(secret: str = "testing123", user: str = "alice", password: str = "wonder"):
    """FreeRADIUS answering Access-Requests from 127.0.0.1 (client secret
    `secret`) on UDP 127.0.0.1:.port, one PAP user."""
    with world_dir("radius") as d:
        port = free_port(socket.SOCK_DGRAM)
        (d / "users").write_text(f'{user} Cleartext-Password := "{password}"\n')
        (d / "radiusd.conf").write_text(f"""prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = /usr/sbin
logdir = {d}
raddbdir = {d}
radacctdir = {d}
name = freeradius
confdir = {d}
modconfdir = {d}
run_dir = {d}
db_dir = {d}
libdir = /usr/lib/freeradius
pidfile = {d}/radiusd.pid
max_request_time = 30
cleanup_delay = 5
max_requests = 1024
hostname_lookups = no
log {{
  destination = stderr
}}
security {{
  allow_core_dumps = no
}}
client localhost {{
  ipaddr = 127.0.0.1
  secret = {secret}
}}
modules {{
  files {{
    filename = {d}/users
  }}
  pap {{
  }}
}}
server default {{
  listen {{
    type = auth
    ipaddr = 127.0.0.1
    port = {port}
  }}
  authorize {{
    files
    pap
  }}
  authenticate {{
    Auth-Type PAP {{
      pap
    }}
  }}
}}
""")
        out = d / "radius.out"
        proc = popen(["freeradius", "-f", "-d", str(d), "-l", "stdout"], out)
        try:
            deadline = time.monotonic() + 30
            while "Ready to process requests" not in (out.read_text(errors="replace") if out.exists() else ""):
                if proc.poll() is not None:
                    raise RuntimeError(f"freeradius exited: {out.read_text(errors='replace')[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError("freeradius did not become ready in 30 s")
                time.sleep(0.05)
            yield type("Radius", (), {"port": port, "secret": secret, "user": user, "password": password,
                                      "proc": proc})
        finally:
            stop(proc)


@contextlib.contextmanager
def snntpd(noservice: bool = False):
    """The `sn` NNTP server (snntpd, run per connection by socat as inetd
    would) on 127.0.0.1:.port with its own spool; noservice=True puts it in
    maintenance (it answers 400 and hangs up)."""
    with world_dir("sn") as d:
        spool = d / "spool"
        spool.mkdir()
        if noservice:
            (spool / ".noservice").write_text("400 maintenance\n")
        port = free_port()
        proc = popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                      "EXEC:/usr/sbin/snntpd.bin"], d / "sn.out", env=dict(os.environ, SNROOT=str(spool)))
        try:
            wait_tcp(port, proc=proc, log=d / "sn.out")
            yield type("Nntp", (), {"port": port, "proc": proc})
        finally:
            stop(proc)


@contextlib.contextmanager
def kamailio(options_reply: str = "200 OK"):
    """Kamailio on UDP and TCP 127.0.0.1:.port answering OPTIONS with
    `options_reply` (e.g. "503 Service Unavailable" for a wrong answer)."""
    mods = sorted(Path("/usr/lib").glob("*/kamailio/modules/sl.so"))
    if not mods:
        raise RuntimeError("kamailio's sl module not found")
    code, _, reason = options_reply.partition(" ")
    with world_dir("sip") as d:
        port = free_port()
        (d / "k.cfg").write_text(f"""#!KAMAILIO
debug=1
log_stderror=yes
children=1
disable_tcp=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
mpath="{mods[0].parent}/"
loadmodule "sl.so"
request_route {{
    if (method=="OPTIONS") {{
        sl_send_reply("{code}", "{reason}");
        exit;
    }}
    sl_send_reply("501", "Not Implemented");
}}
""")
        proc = popen(["kamailio", "-DD", "-E", "-f", str(d / "k.cfg"), "-P", str(d / "k.pid"), "-Y", str(d)],
                     d / "k.out")
        try:
            wait_tcp(port, proc=proc, log=d / "k.out")
            yield type("Sip", (), {"port": port, "proc": proc})
        finally:
            stop(proc)
