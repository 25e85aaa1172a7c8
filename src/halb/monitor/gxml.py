"""Ganglia's XML dump format (what gmond writes to any TCP client on port
8649 and what gmetad reads), produced and parsed here. Pure: no socket.

    <GANGLIA_XML VERSION="3.1.7" SOURCE="gmond">
    <CLUSTER NAME="Mon Cluster" LOCALTIME="..." OWNER="unspecified" ...>
    <HOST NAME="N1" IP="10.0.0.1" REPORTED="..." TN="0" TMAX="20" DMAX="0" ...>
    <METRIC NAME="load_one" VAL="0.12" TYPE="float" UNITS=" " TN="3" TMAX="70"
            DMAX="0" SLOPE="both" SOURCE="gmond">
    <EXTRA_DATA><EXTRA_ELEMENT NAME="GROUP" VAL="load"/>...</EXTRA_DATA>
    </METRIC>...
    </HOST></CLUSTER></GANGLIA_XML>

A gmetad's own dump wraps clusters in <GRID> elements; the parser accepts
both. Entity declarations are refused (no entity expansion from the network).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from xml.parsers import expat

VERSION = "3.1.7"  # the Ganglia version whose format this follows
MAX_XML_BYTES = 16 * 1024 * 1024

TYPES = ("string", "int8", "uint8", "int16", "uint16", "int32", "uint32", "float", "double", "timestamp")
NUMERIC_TYPES = frozenset(TYPES) - {"string"}
SLOPES = ("zero", "positive", "negative", "both", "unspecified")

DTD = """<!DOCTYPE GANGLIA_XML [
   <!ELEMENT GANGLIA_XML (GRID|CLUSTER|HOST)*>
      <!ATTLIST GANGLIA_XML VERSION CDATA #REQUIRED>
      <!ATTLIST GANGLIA_XML SOURCE CDATA #REQUIRED>
   <!ELEMENT GRID (CLUSTER | GRID | HOSTS | METRICS)*>
      <!ATTLIST GRID NAME CDATA #REQUIRED>
      <!ATTLIST GRID AUTHORITY CDATA #REQUIRED>
      <!ATTLIST GRID LOCALTIME CDATA #IMPLIED>
   <!ELEMENT CLUSTER (HOST | HOSTS | METRICS)*>
      <!ATTLIST CLUSTER NAME CDATA #REQUIRED>
      <!ATTLIST CLUSTER OWNER CDATA #IMPLIED>
      <!ATTLIST CLUSTER LATLONG CDATA #IMPLIED>
      <!ATTLIST CLUSTER URL CDATA #IMPLIED>
      <!ATTLIST CLUSTER LOCALTIME CDATA #REQUIRED>
   <!ELEMENT HOST (METRIC)*>
      <!ATTLIST HOST NAME CDATA #REQUIRED>
      <!ATTLIST HOST IP CDATA #REQUIRED>
      <!ATTLIST HOST LOCATION CDATA #IMPLIED>
      <!ATTLIST HOST TAGS CDATA #IMPLIED>
      <!ATTLIST HOST REPORTED CDATA #REQUIRED>
      <!ATTLIST HOST TN CDATA #IMPLIED>
      <!ATTLIST HOST TMAX CDATA #IMPLIED>
      <!ATTLIST HOST DMAX CDATA #IMPLIED>
      <!ATTLIST HOST GMOND_STARTED CDATA #IMPLIED>
   <!ELEMENT METRIC (EXTRA_DATA*)>
      <!ATTLIST METRIC NAME CDATA #REQUIRED>
      <!ATTLIST METRIC VAL CDATA #REQUIRED>
      <!ATTLIST METRIC TYPE (string | int8 | uint8 | int16 | uint16 | int32 | uint32 | float | double | timestamp) #REQUIRED>
      <!ATTLIST METRIC UNITS CDATA #IMPLIED>
      <!ATTLIST METRIC TN CDATA #IMPLIED>
      <!ATTLIST METRIC TMAX CDATA #IMPLIED>
      <!ATTLIST METRIC DMAX CDATA #IMPLIED>
      <!ATTLIST METRIC SLOPE (zero | positive | negative | both | unspecified) #IMPLIED>
      <!ATTLIST METRIC SOURCE (gmond) 'gmond'>
   <!ELEMENT EXTRA_DATA (EXTRA_ELEMENT*)>
   <!ELEMENT EXTRA_ELEMENT EMPTY>
      <!ATTLIST EXTRA_ELEMENT NAME CDATA #REQUIRED>
      <!ATTLIST EXTRA_ELEMENT VAL CDATA #REQUIRED>
   <!ELEMENT HOSTS EMPTY>
      <!ATTLIST HOSTS UP CDATA #REQUIRED>
      <!ATTLIST HOSTS DOWN CDATA #REQUIRED>
      <!ATTLIST HOSTS SOURCE (gmond | gmetad) #REQUIRED>
   <!ELEMENT METRICS (EXTRA_DATA*)>
      <!ATTLIST METRICS NAME CDATA #REQUIRED>
      <!ATTLIST METRICS SUM CDATA #REQUIRED>
      <!ATTLIST METRICS NUM CDATA #REQUIRED>
      <!ATTLIST METRICS TYPE (string | int8 | uint8 | int16 | uint16 | int32 | uint32 | float | double | timestamp) #REQUIRED>
      <!ATTLIST METRICS UNITS CDATA #IMPLIED>
      <!ATTLIST METRICS SLOPE (zero | positive | negative | both | unspecified) #IMPLIED>
      <!ATTLIST METRICS SOURCE (gmond) 'gmond'>
]>
"""


class XmlError(ValueError):
    """The data is not a usable Ganglia XML dump (the message says why)."""


@dataclass
class Metric:
    name: str
    val: str
    type: str = "float"
    units: str = ""
    tn: int = 0
    tmax: int = 60
    dmax: int = 0
    slope: str = "both"
    extra: dict[str, str] = field(default_factory=dict)  # GROUP, DESC, TITLE

    @property
    def numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    def number(self) -> float | None:
        """The value as a float (None for strings and unreadable or non-finite values)."""
        if not self.numeric:
            return None
        try:
            v = float(self.val)
        except ValueError:
            return None
        return v if math.isfinite(v) else None


@dataclass
class Host:
    name: str
    ip: str = ""
    reported: int = 0
    tn: int = 0
    tmax: int = 20
    dmax: int = 0
    location: str = "unspecified"
    gmond_started: int = 0
    metrics: dict[str, Metric] = field(default_factory=dict)


@dataclass
class Cluster:
    name: str
    localtime: int = 0
    owner: str = "unspecified"
    latlong: str = "unspecified"
    url: str = "unspecified"
    hosts: dict[str, Host] = field(default_factory=dict)


# ---------------------------------------------------------------- producing
def _attr(v) -> str:
    s = str(v)
    return (s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;"))


def _clean(s: str) -> str:
    # characters XML 1.0 cannot carry at all are dropped
    return "".join(c for c in s if c in "\t\n\r" or " " <= c <= "\ud7ff" or "\ue000" <= c <= "\ufffd"
                   or "\U00010000" <= c <= "\U0010ffff")


def render(clusters: list[Cluster], source: str = "gmond") -> bytes:
    """The XML dump gmond writes on its TCP port."""
    out = ['<?xml version="1.0" encoding="ISO-8859-1" standalone="yes"?>\n', DTD,
           f'<GANGLIA_XML VERSION="{VERSION}" SOURCE="{_attr(source)}">\n']
    for c in clusters:
        out.append(f'<CLUSTER NAME="{_attr(c.name)}" LOCALTIME="{int(c.localtime)}" OWNER="{_attr(c.owner)}" '
                   f'LATLONG="{_attr(c.latlong)}" URL="{_attr(c.url)}">\n')
        for h in c.hosts.values():
            out.append(f'<HOST NAME="{_attr(h.name)}" IP="{_attr(h.ip)}" REPORTED="{int(h.reported)}" '
                       f'TN="{int(h.tn)}" TMAX="{int(h.tmax)}" DMAX="{int(h.dmax)}" '
                       f'LOCATION="{_attr(h.location)}" GMOND_STARTED="{int(h.gmond_started)}">\n')
            for m in h.metrics.values():
                out.append(f'<METRIC NAME="{_attr(m.name)}" VAL="{_attr(m.val)}" TYPE="{m.type}" '
                           f'UNITS="{_attr(m.units)}" TN="{int(m.tn)}" TMAX="{int(m.tmax)}" '
                           f'DMAX="{int(m.dmax)}" SLOPE="{m.slope}" SOURCE="gmond">\n')
                if m.extra:
                    out.append("<EXTRA_DATA>\n")
                    for k, v in m.extra.items():
                        out.append(f'<EXTRA_ELEMENT NAME="{_attr(k)}" VAL="{_attr(v)}"/>\n')
                    out.append("</EXTRA_DATA>\n")
                out.append("</METRIC>\n")
            out.append("</HOST>\n")
        out.append("</CLUSTER>\n")
    out.append("</GANGLIA_XML>\n")
    # ISO-8859-1 as gmond declares; what it cannot carry becomes a character reference
    return _clean("".join(out)).encode("iso-8859-1", errors="xmlcharrefreplace")


# ---------------------------------------------------------------- parsing
def _int(attrs: dict, key: str, default: int, where: str) -> int:
    v = attrs.get(key)
    if v is None or v == "":
        return default
    try:
        return int(float(v))
    except (ValueError, OverflowError):
        raise XmlError(f"{where}: {key}={v!r} is not a number") from None


def _need(attrs: dict, key: str, where: str) -> str:
    v = attrs.get(key)
    if v is None:
        raise XmlError(f"{where} has no {key} attribute")
    return v


class _Parser:
    def __init__(self):
        self.clusters: list[Cluster] = []
        self.source = ""
        self.stack: list[str] = []
        self.cluster: Cluster | None = None
        self.host: Host | None = None
        self.metric: Metric | None = None
        self.p = expat.ParserCreate()
        self.p.StartElementHandler = self.start
        self.p.EndElementHandler = self.end
        self.p.EntityDeclHandler = self.entity
        self.p.CharacterDataHandler = None

    def entity(self, *_a):
        raise XmlError("entity declarations are not accepted")

    def start(self, tag, attrs):
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        if len(self.stack) > 16:
            raise XmlError("elements nested too deep")
        if parent is None:
            if tag != "GANGLIA_XML":
                raise XmlError(f"the document is <{tag}>, not <GANGLIA_XML>")
            self.source = attrs.get("SOURCE", "")
        elif tag == "CLUSTER":
            if parent not in ("GANGLIA_XML", "GRID"):
                raise XmlError(f"<CLUSTER> inside <{parent}>")
            name = _need(attrs, "NAME", "CLUSTER")
            self.cluster = Cluster(name=name, localtime=_int(attrs, "LOCALTIME", 0, f"CLUSTER {name}"),
                                   owner=attrs.get("OWNER", "unspecified"),
                                   latlong=attrs.get("LATLONG", "unspecified"), url=attrs.get("URL", "unspecified"))
            self.clusters.append(self.cluster)
        elif tag == "HOST":
            if parent not in ("CLUSTER", "GANGLIA_XML"):
                raise XmlError(f"<HOST> inside <{parent}>")
            if self.cluster is None or parent == "GANGLIA_XML":  # a lone host (gmetad host request)
                self.cluster = Cluster(name="")
                self.clusters.append(self.cluster)
            name = _need(attrs, "NAME", "HOST")
            where = f"HOST {name}"
            self.host = Host(name=name, ip=attrs.get("IP", ""), reported=_int(attrs, "REPORTED", 0, where),
                             tn=_int(attrs, "TN", 0, where), tmax=_int(attrs, "TMAX", 20, where),
                             dmax=_int(attrs, "DMAX", 0, where), location=attrs.get("LOCATION", "unspecified"),
                             gmond_started=_int(attrs, "GMOND_STARTED", 0, where))
            self.cluster.hosts[name] = self.host
        elif tag == "METRIC":
            if parent != "HOST" or self.host is None:
                raise XmlError(f"<METRIC> inside <{parent}>")
            name = _need(attrs, "NAME", f"METRIC in HOST {self.host.name}")
            where = f"METRIC {name} of HOST {self.host.name}"
            typ = _need(attrs, "TYPE", where)
            if typ not in TYPES and typ not in ("int64", "uint64"):
                raise XmlError(f"{where}: unknown TYPE {typ!r}")
            slope = attrs.get("SLOPE", "both")
            if slope not in SLOPES:
                raise XmlError(f"{where}: unknown SLOPE {slope!r}")
            self.metric = Metric(name=name, val=_need(attrs, "VAL", where), type=typ, units=attrs.get("UNITS", ""),
                                 tn=_int(attrs, "TN", 0, where), tmax=_int(attrs, "TMAX", 60, where),
                                 dmax=_int(attrs, "DMAX", 0, where), slope=slope)
            self.host.metrics[name] = self.metric
        elif tag == "EXTRA_ELEMENT":
            if parent != "EXTRA_DATA":
                raise XmlError(f"<EXTRA_ELEMENT> inside <{parent}>")
            if self.metric is not None and len(self.metric.extra) < 32:
                self.metric.extra[attrs.get("NAME", "")] = attrs.get("VAL", "")
        elif tag in ("GRID", "HOSTS", "METRICS", "EXTRA_DATA"):
            pass  # summaries of a gmetad's dump: not needed here
        else:
            raise XmlError(f"unexpected element <{tag}>")

    def end(self, tag):
        self.stack.pop()
        if tag == "METRIC":
            self.metric = None
        elif tag == "HOST":
            self.host = None
        elif tag == "CLUSTER":
            self.cluster = None


def parse(data: bytes) -> tuple[str, list[Cluster]]:
    """(SOURCE, clusters) from a Ganglia XML dump, or XmlError saying what is wrong."""
    if not isinstance(data, (bytes, bytearray)):
        raise XmlError("not bytes")
    if len(data) > MAX_XML_BYTES:
        raise XmlError(f"the dump is larger than {MAX_XML_BYTES} bytes")
    if not data.strip():
        raise XmlError("empty answer")
    p = _Parser()
    try:
        p.p.Parse(bytes(data), True)
    except expat.ExpatError as e:
        raise XmlError(f"malformed XML: {expat.errors.messages.get(e.code, e)} at line {e.lineno}, "
                       f"column {e.offset}") from None
    except RecursionError:
        raise XmlError("elements nested too deep") from None
    except XmlError:
        raise
    except LookupError as e:  # an encoding expat does not know
        raise XmlError(f"unreadable XML: {e}") from None
    except (UnicodeError, ValueError) as e:
        raise XmlError(f"unreadable XML: {type(e).__name__}: {e}") from None
    return p.source, p.clusters
