import pytest

from halb.errors import IpvsError
from halb.model import Dest, Op, Service, ServiceKey, Table, op_from_dict, op_to_dict


def key(port=80):
    return ServiceKey("tcp", "10.0.0.100", port)


def test_add_service_then_dests_and_errors_read_like_libipvs():
    t = Table(default_fwd="masq")
    t = t.apply([Op("add-service", service=Service(key(), "rr"))])
    with pytest.raises(IpvsError, match="Service already exists"):
        t.apply([Op("add-service", service=Service(key(), "rr"))])
    t = t.apply([Op("add-dest", key=key(), dest=Dest("10.0.0.1", 80))])
    assert t.get(key()).dests[0].fwd == "masq"
    with pytest.raises(IpvsError, match="Destination already exists"):
        t.apply([Op("add-dest", key=key(), dest=Dest("10.0.0.1", 80))])
    with pytest.raises(IpvsError, match="Service not defined"):
        t.apply([Op("add-dest", key=key(81), dest=Dest("10.0.0.1", 80))])
    with pytest.raises(IpvsError, match="No such destination"):
        t.apply([Op("del-dest", key=key(), dest=Dest("10.0.0.9", 80))])
    with pytest.raises(IpvsError, match="No such service"):
        t.apply([Op("del-service", key=key(81))])


def test_apply_is_all_or_nothing():
    t = Table()
    ops = [Op("add-service", service=Service(key(), "rr")),
           Op("add-dest", key=key(), dest=Dest("10.0.0.1", 80)),
           Op("add-dest", key=key(), dest=Dest("10.0.0.1", 80))]
    with pytest.raises(IpvsError) as ei:
        t.apply(ops)
    assert ei.value.index == 2
    assert t.services == {}


def test_engine_refuses_forwarding_it_cannot_do():
    t = Table(default_fwd="masq")
    t.allowed_fwd = ("masq",)
    t.engine_name = "proxy"
    t = t.apply([Op("add-service", service=Service(key()))])
    with pytest.raises(IpvsError, match="--engine nft"):
        t.apply([Op("add-dest", key=key(), dest=Dest("10.0.0.1", 80, fwd="gate"))])


def test_bad_values_are_refused():
    with pytest.raises(IpvsError):
        Service(key(), "nosuch")
    with pytest.raises(IpvsError):
        ServiceKey("tcp", "10.0.0.300", 80)
    with pytest.raises(IpvsError):
        Dest("10.0.0.1", 80, weight=-1)


def test_ops_round_trip_through_json_dicts():
    op = Op("add-dest", key=key(), dest=Dest("10.0.0.1", 8080, "gate", 3, 10, 2))
    back = op_from_dict(op_to_dict(op))
    assert back.key == op.key and back.dest.config() == op.dest.config()
    svc = Service(key(), "sh", persistent=True, flags=("sh-port",))
    assert svc.timeout == 300
    back = op_from_dict(op_to_dict(Op("add-service", service=svc)))
    assert back.service.config() == svc.config()
