"""Each check against a REAL server of its protocol started by the test,
with a right answer (up) and a wrong one (down)."""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from halb.director import checks
from halb.director.config import parse_text

import director_servers as servers

pytestmark = pytest.mark.timeout(120)


def spec(virtual_lines: str, real: str, globals_: str = "checktimeout=10\nnegotiatetimeout=10\n",
         vport: int = 80):
    cfg = parse_text(f"{globals_}virtual=127.0.0.1:{vport}\n\treal={real}\n" +
                     "".join(f"\t{l}\n" for l in virtual_lines.strip().splitlines()), "t.cf", hostname="N1")
    v = cfg.virtuals[0]
    return checks.CheckSpec.build(v, v.reals[0])


def run(s, negotiate=None) -> checks.Result:
    return asyncio.run(checks.run(s, negotiate))


def up(s, **kw):
    r = run(s, **kw)
    assert r.ok, r.msg
    return r


def down(s, **kw):
    r = run(s, **kw)
    assert not r.ok, r.msg
    return r


def need(binary):
    if not shutil.which(binary):
        pytest.skip(f"{binary} not installed")


# -- connect, on/off, external, timeouts ---------------------------------------

def test_connect_up_and_refused():
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        port = ls.getsockname()[1]
        up(spec("checktype=connect", f"127.0.0.1:{port} masq"))
    down(spec("checktype=connect", f"127.0.0.1:{port} masq"))


def test_negotiate_timeout_is_bounded():
    with socket.socket() as ls:  # accepts (backlog) but never answers
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        port = ls.getsockname()[1]
        t0 = time.monotonic()
        r = down(spec("service=http\nnegotiatetimeout=1", f"127.0.0.1:{port} masq"))
        assert time.monotonic() - t0 < 2.5 and "timed out" in r.msg


def test_on_off_none():
    up(spec("checktype=on", "127.0.0.1:1 masq"))
    down(spec("checktype=off", "127.0.0.1:1 masq"))
    up(spec("service=none", "127.0.0.1:1 masq"))


def test_external_gets_ldirectord_arguments(tmp_path):
    script = tmp_path / "chk.sh"
    out = tmp_path / "args"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {out}\n[ \"$4\" = 8080 ]\n")
    script.chmod(0o755)
    up(spec(f'checktype=external\ncheckcommand="{script}"', "127.0.0.2:8080 masq"))
    assert out.read_text().split() == ["127.0.0.1", "80", "127.0.0.2", "8080"]
    down(spec(f'checktype=external\ncheckcommand="{script}"', "127.0.0.2:8081 masq"))


def test_external_timeout_kills_the_command(tmp_path):
    script = tmp_path / "slow.sh"
    script.write_text(f"#!/bin/sh\necho $$ > {tmp_path}/pid\nexec sleep 30\n")
    script.chmod(0o755)
    t0 = time.monotonic()
    r = down(spec(f'checktype=external\ncheckcommand="{script}"\nchecktimeout=1', "127.0.0.2:80 masq"))
    assert "timed out" in r.msg and time.monotonic() - t0 < 5
    pid = int((tmp_path / "pid").read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the timed-out check command is still running")


# -- ICMP ping --------------------------------------------------------------------

@pytest.mark.root  # ICMP sockets need root unless ping_group_range allows the user
def test_ping_loopback_up():
    up(spec("checktype=ping", "127.0.0.1 masq"))


@pytest.mark.root
def test_ping_no_answer_in_namespace(tmp_path):
    """In a private namespace: a link's own address answers, an address on
    its subnet with no host behind it does not."""
    ns = f"hdping{int(time.time() * 1000) % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                    ["ip", "addr", "add", "10.77.0.1/24", "dev", "v0"], ["ip", "link", "set", "v0", "up"],
                    ["ip", "link", "set", "v1", "up"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        code = ("import asyncio,sys\nfrom halb.director import checks\nfrom halb.director.config import parse_text\n"
                "v=parse_text('virtual=127.0.0.1:80\\n\\tchecktype=ping\\n\\tchecktimeout=1\\n\\treal='"
                "+sys.argv[1]+' masq\\n').virtuals[0]\n"
                "r=asyncio.run(checks.run(checks.CheckSpec.build(v, v.reals[0])))\nprint(r.ok, r.msg)\n")
        res = {}
        for addr in ("10.77.0.1", "10.77.0.2"):
            p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code, addr],
                               capture_output=True, text=True, timeout=30)
            assert p.returncode == 0, p.stderr
            res[addr] = p.stdout.split()[0]
        assert res == {"10.77.0.1": "True", "10.77.0.2": "False"}
    finally:
        subprocess.run(["ip", "netns", "del", ns])


# -- HTTP family (nginx) ---------------------------------------------------------------

@pytest.fixture(scope="module")
def web(tmp_path_factory):
    need("nginx")
    with servers.nginx(tmp_path_factory.mktemp("nginx"), body="N1 is here") as n:
        yield n


def test_http_receive_regex_status_and_redirect(web):
    up(spec('service=http\nrequest="/"\nreceive="N[12] is"', f"127.0.0.1:{web.http} masq"))
    down(spec('service=http\nrequest="/"\nreceive="N2"', f"127.0.0.1:{web.http} masq"))
    down(spec('service=http\nrequest="/missing"', f"127.0.0.1:{web.http} masq"))
    up(spec('service=http\nrequest="/moved"\nreceive="N1"', f"127.0.0.1:{web.http} masq"))
    # per-real request/receive override the virtual's (the article's syntax)
    up(spec('service=http\nreceive="nothing"', f'127.0.0.1:{web.http} masq 1 "/", "N1"'))
    r = up(spec('service=http\nhttpmethod=HEAD', f"127.0.0.1:{web.http} masq"))
    assert r.msg.startswith("200")


def test_https_sni_virtualhost_and_verification(web):
    a_pem = web.certs["a.example"][0]
    up(spec('service=https\nvirtualhost="a.example"\nreceive="site A"', f"127.0.0.1:{web.https} masq"))
    up(spec('service=https\nvirtualhost="b.example"\nreceive="site B"', f"127.0.0.1:{web.https} masq"))
    down(spec('service=https\nvirtualhost="b.example"\nreceive="site A"', f"127.0.0.1:{web.https} masq"))
    # certificate verification (halb addition): trusted CA and matching name
    up(spec(f'service=https\nvirtualhost="a.example"\nsslverify=yes\nsslcafile="{a_pem}"\nreceive="site A"',
            f"127.0.0.1:{web.https} masq"))
    r = down(spec(f'service=https\nvirtualhost="b.example"\nsslverify=yes\nsslcafile="{a_pem}"',
                  f"127.0.0.1:{web.https} masq"))
    assert "CERTIFICATE_VERIFY_FAILED" in r.msg or "certificate" in r.msg.lower()
    # plain HTTP to the TLS port is a wrong answer
    down(spec("service=http", f"127.0.0.1:{web.https} masq"))


def test_http_proxy(web):
    up(spec(f'service=http_proxy\nrequest="http://127.0.0.1:{web.http}/"\nreceive="N1 is"',
            f"127.0.0.1:{web.proxy} masq"))
    down(spec(f'service=http_proxy\nrequest="http://127.0.0.1:{web.http}/missing"',
              f"127.0.0.1:{web.proxy} masq"))


def test_combined_checktype(web):
    s = spec("checktype=2\nservice=http\nreceive=\"N1\"", f"127.0.0.1:{web.http} masq")
    assert s.checktype == "combined" and s.num_connects == 2
    up(s, negotiate=False)
    up(s, negotiate=True)
    s2 = spec("checktype=2\nservice=http\nreceive=\"absent\"", f"127.0.0.1:{web.http} masq")
    up(s2, negotiate=False)  # a connect check only connects
    down(s2, negotiate=True)


def test_simpletcp_against_nginx(web):
    up(spec('service=simpletcp\nrequest="GET / HTTP/1.0\\n\\n"\nreceive="^HTTP/1.1 200"',
            f"127.0.0.1:{web.http} masq"))
    down(spec('service=simpletcp\nrequest="GET /missing HTTP/1.0\\n\\n"\nreceive="^HTTP/1.1 200"',
              f"127.0.0.1:{web.http} masq"))


# -- SMTP (exim) ----------------------------------------------------------------------

@pytest.mark.root
def test_smtp_and_submission(tmp_path, web):
    need("exim4")
    with servers.exim(tmp_path / "exim") as mx:
        up(spec("service=smtp", f"127.0.0.1:{mx.port} masq"))
        up(spec("service=submission", f"127.0.0.1:{mx.port} masq"))
    # an HTTP server never greets: a wrong answer
    down(spec("service=smtp\nnegotiatetimeout=2", f"127.0.0.1:{web.http} masq"))


# -- FTP (vsftpd) ---------------------------------------------------------------------

@pytest.mark.root
def test_ftp(tmp_path, web):
    need("vsftpd")
    with servers.vsftpd(tmp_path / "ftp", {"health.txt": "ftp server OK\n"}) as ftp:
        up(spec('service=ftp\nrequest="health.txt"\nreceive="server OK"', f"127.0.0.1:{ftp.port} masq"))
        down(spec('service=ftp\nrequest="health.txt"\nreceive="broken"', f"127.0.0.1:{ftp.port} masq"))
        down(spec('service=ftp\nrequest="absent.txt"\nreceive="OK"', f"127.0.0.1:{ftp.port} masq"))
    down(spec("service=ftp\nnegotiatetimeout=2", f"127.0.0.1:{web.http} masq"))


# -- DNS (dnsmasq) ----------------------------------------------------------------------

@pytest.mark.root
def test_dns_udp_tcp_and_ptr(tmp_path):
    need("dnsmasq")
    with servers.dnsmasq(tmp_path / "dns", {"www.example": "10.9.8.7"}) as ns:
        up(spec('service=dns\nrequest="www.example"\nreceive="10\\.9\\.8\\.7"', f"127.0.0.1:{ns.port} gate",
                vport=53))
        up(spec('service=dns\nprotocol=tcp\nrequest="www.example"\nreceive="10.9.8"', f"127.0.0.1:{ns.port} gate",
                vport=53))
        up(spec('service=dns\nrequest="10.9.8.7"\nreceive="www.example"', f"127.0.0.1:{ns.port} gate", vport=53))
        down(spec('service=dns\nrequest="www.example"\nreceive="10\\.0\\.0\\.1"', f"127.0.0.1:{ns.port} gate",
                  vport=53))
        down(spec('service=dns\nrequest="nxdomain.example"\nreceive="."', f"127.0.0.1:{ns.port} gate", vport=53))


# -- PostgreSQL --------------------------------------------------------------------------

@pytest.mark.root
@pytest.mark.timeout(180)
def test_pgsql(tmp_path):
    if servers.postgres_bindir() is None:
        pytest.skip("postgresql not installed")
    need("setpriv")
    with servers.postgres(tmp_path / "pg") as pg:
        base = f'service=pgsql\nlogin="{pg.user}"\npasswd="{pg.password}"\ndatabase="postgres"\n'
        up(spec(base + 'request="SELECT ok FROM health"', f"127.0.0.1:{pg.port} masq"))
        down(spec(base + 'request="SELECT ok FROM health WHERE ok = 2"', f"127.0.0.1:{pg.port} masq"))
        down(spec(f'service=pgsql\nlogin="{pg.user}"\npasswd="wrong"\ndatabase="postgres"\n'
                  'request="SELECT 1"', f"127.0.0.1:{pg.port} masq"))


# -- IMAP / POP (dovecot) ------------------------------------------------------------------

@pytest.mark.root
def test_imap_pop_plain_and_tls(tmp_path):
    need("dovecot")
    with servers.dovecot(tmp_path / "mail") as mx:
        cred = f'login="{mx.user}"\npasswd="{mx.password}"\n'
        bad = f'login="{mx.user}"\npasswd="nope"\n'
        for svc, port in (("imap", mx.imap), ("imaps", mx.imaps), ("pop", mx.pop3), ("pops", mx.pop3s)):
            up(spec(f"service={svc}", f"127.0.0.1:{port} masq"))
            up(spec(f"service={svc}\n{cred}", f"127.0.0.1:{port} masq"))
            down(spec(f"service={svc}\n{bad}", f"127.0.0.1:{port} masq"))
        down(spec("service=imap", f"127.0.0.1:{mx.pop3} masq"))  # a POP server is a wrong answer


# -- MySQL (MariaDB) ---------------------------------------------------------------

@pytest.mark.root
@pytest.mark.timeout(240)
def test_mysql(tmp_path):
    need("mariadbd")
    need("mariadb-install-db")
    with servers.mariadb() as db:
        base = f'service=mysql\nlogin="{db.user}"\npasswd="{db.password}"\ndatabase="{db.database}"\n'
        up(spec(base + 'request="SELECT ok FROM health"', f"127.0.0.1:{db.port} masq"))
        down(spec(base + 'request="SELECT ok FROM health WHERE ok = 2"', f"127.0.0.1:{db.port} masq"))
        down(spec(base.replace(db.password, "wrong") + 'request="SELECT 1"', f"127.0.0.1:{db.port} masq"))


# -- LDAP / LDAPS (slapd) -------------------------------------------------------------

@pytest.mark.root
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ldap_and_ldaps(tmp_path):
    need("slapd")
    need("ldapadd")
    with servers.slapd() as ld:
        cred = f'login="{ld.rootdn}"\npasswd="{ld.password}"\n'
        for svc, port in (("ldap", ld.port), ("ldaps", ld.ldaps)):
            up(spec(f'service={svc}\nrequest="{ld.suffix}"\nreceive="dc=example"', f"127.0.0.1:{port} masq"))
            up(spec(f'service={svc}\n{cred}request="{ld.suffix}"\nreceive="example"', f"127.0.0.1:{port} masq"))
            # wrong password, absent base, DN not matching receive: down
            down(spec(f'service={svc}\nlogin="{ld.rootdn}"\npasswd="nope"\nrequest="{ld.suffix}"',
                      f"127.0.0.1:{port} masq"))
            down(spec(f'service={svc}\nrequest="dc=absent,dc=org"', f"127.0.0.1:{port} masq"))
            down(spec(f'service={svc}\nrequest="{ld.suffix}"\nreceive="dc=other"', f"127.0.0.1:{port} masq"))


# -- RADIUS (FreeRADIUS) ------------------------------------------------------------------

@pytest.mark.root
def test_radius(tmp_path):
    need("freeradius")
    with servers.freeradius() as rad:
        base = f'service=radius\nprotocol=udp\nsecret="{rad.secret}"\nlogin="{rad.user}"\n'
        r = up(spec(base + f'passwd="{rad.password}"', f"127.0.0.1:{rad.port} masq", vport=1812))
        assert r.msg == "Access-Accept"
        # as ldirectord (Authen::Radius check_pwd): a reject is an answer, the server is up
        assert up(spec(base + 'passwd="bad"', f"127.0.0.1:{rad.port} masq", vport=1812)).msg == "Access-Reject"
        # a wrong shared secret: the answer does not authenticate
        down(spec(base.replace(rad.secret, "not-the-secret") + f'passwd="{rad.password}"',
                  f"127.0.0.1:{rad.port} masq", vport=1812))
    down(spec(f'service=radius\nprotocol=udp\nsecret="x"\nlogin="a"\npasswd="b"\nnegotiatetimeout=1',
              f"127.0.0.1:{rad.port} masq", vport=1812))


# -- NNTP (sn) --------------------------------------------------------------------------

@pytest.mark.root
def test_nntp():
    if not shutil.which("socat") or not os.path.exists("/usr/sbin/snntpd.bin"):
        pytest.skip("sn (snntpd) and socat needed")
    with servers.snntpd() as news:
        assert up(spec("service=nntp", f"127.0.0.1:{news.port} masq", vport=119)).msg.startswith("201")
    with servers.snntpd(noservice=True) as news:
        down(spec("service=nntp", f"127.0.0.1:{news.port} masq", vport=119))


# -- SIP (Kamailio) -------------------------------------------------------------------------

@pytest.mark.root
def test_sip_udp_and_tcp():
    need("kamailio")
    with servers.kamailio() as sip:
        for proto in ("udp", "tcp"):
            r = up(spec(f"service=sip\nprotocol={proto}", f"127.0.0.1:{sip.port} masq", vport=5060))
            assert r.msg == "SIP/2.0 200 OK"
    with servers.kamailio("503 Service Unavailable") as sip:
        for proto in ("udp", "tcp"):
            r = down(spec(f"service=sip\nprotocol={proto}", f"127.0.0.1:{sip.port} masq", vport=5060))
            assert "503" in r.msg


def test_ipv6_connect_and_http(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    with socket.socket(socket.AF_INET6) as ls:
        try:
            ls.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1")
        ls.listen()
        port = ls.getsockname()[1]
        cfg = parse_text(f"checktimeout=5\nvirtual6=[::1]:80\n\treal6=[::1]:{port} masq\n\tchecktype=connect\n",
                         "t.cf")
        v = cfg.virtuals[0]
        s = checks.CheckSpec.build(v, v.reals[0])
        assert (s.host, s.port) == ("::1", port)
        up(s)
    down(s)
