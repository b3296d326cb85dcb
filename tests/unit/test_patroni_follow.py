"""The pure parts of following a Patroni cluster (sagaz.deploy.patroni_follow) and of its
settings (sagaz.deploy.patroni): which view counts, where the pools point, how pgbouncer.ini is
rewritten. The documents are shaped as Patroni 4's ``GET /cluster`` answers (tests/ha runs them
against a real cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from sagaz.deploy.patroni import PatroniSettings, conf_value
from sagaz.deploy.patroni_follow import (
    agreed_view,
    configured_hosts,
    follow_targets,
    rewrite_database_hosts,
)
from sagaz.errors import ConfigurationError


def member(name: str, role: str, state: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "role": role, "state": state, "host": f"10.0.0.{name[-1]}",
            "port": 5432, "timeline": 2, **extra}


def view(leader: str | None, *replicas: str, state: str = "streaming") -> dict[str, Any]:
    members = [member(leader, "leader", "running")] if leader else []
    return {"members": members + [member(r, "replica", state) for r in replicas],
            "scope": "sagaz"}


def test_targets_are_the_running_leader_and_the_streaming_replicas() -> None:
    doc = view("node1", "node0", "node2")
    doc["members"][2]["state"] = "starting"
    targets = follow_targets(doc)
    assert (targets.leader, targets.leader_host) == ("node1", "10.0.0.1")
    assert targets.replicas == ["node0"] and targets.read_hosts() == ["10.0.0.0"]


def test_no_replica_reads_go_to_the_leader_and_no_leader_means_no_target() -> None:
    assert follow_targets(view("node0")).read_hosts() == ["10.0.0.0"]
    stopped = {"members": [member("node0", "leader", "stopped")]}
    assert follow_targets(stopped).leader is None and follow_targets(stopped).read_hosts() == []
    tagged = view("node0", "node1")
    tagged["members"][1]["tags"] = {"noloadbalance": True}
    assert follow_targets(tagged).replicas == []


def test_a_sync_standby_serves_reads() -> None:
    doc = {"members": [member("node0", "leader", "running"),
                       member("node1", "sync_standby", "streaming")]}
    assert follow_targets(doc).replicas == ["node1"]


def test_the_pools_follow_only_a_leader_a_majority_names() -> None:
    # A partitioned old leader still names itself; the two others already elected node1.
    isolated, majority = view("node0", "node1", "node2"), view("node1", "node0", "node2")
    assert agreed_view([isolated, majority, majority], 3) is majority
    # Only one member answers: no majority of three.
    assert agreed_view([majority], 3) is None
    assert agreed_view([isolated, majority], 3) is None
    assert agreed_view([], 3) is None
    assert agreed_view([view(None, "node0"), view(None, "node0")], 3) is None


INI = """[databases]
sagaz = host=127.0.0.1 port=5432 dbname=sagaz
[pgbouncer]
server_tls_sslmode = verify-full
"""


def test_rewriting_the_host_list_keeps_the_rest_and_verifies_as_pgbouncer_can() -> None:
    many = rewrite_database_hosts(INI, "sagaz", ["127.0.0.2", "127.0.0.3"])
    assert "sagaz = host=127.0.0.2,127.0.0.3 port=5432 dbname=sagaz\n" in many
    assert "server_tls_sslmode = verify-ca" in many
    assert configured_hosts(many, "sagaz") == ["127.0.0.2", "127.0.0.3"]
    one = rewrite_database_hosts(many, "sagaz", ["127.0.0.3"])
    assert configured_hosts(one, "sagaz") == ["127.0.0.3"]
    assert "server_tls_sslmode = verify-full" in one
    assert rewrite_database_hosts(INI, "other", ["x"]).startswith(INI.split("\n")[0])
    assert configured_hosts(INI, "other") == []


def test_settings_follow_patronis_rules() -> None:
    PatroniSettings()  # the test settings: ttl 20, loop_wait 2, retry_timeout 5
    for bad in ({"ttl": 10}, {"loop_wait": 0}, {"retry_timeout": 2},
                {"ttl": 20, "loop_wait": 11, "retry_timeout": 5},
                {"synchronous_mode_strict": True}):
        with pytest.raises(ConfigurationError):
            PatroniSettings(**bad)  # type: ignore[arg-type]
    assert PatroniSettings(synchronous_mode=True, synchronous_mode_strict=True)


def test_postgresql_conf_values_become_yaml_values() -> None:
    assert conf_value("'scram-sha-256'") == "scram-sha-256"
    assert conf_value("'it''s'") == "it's"
    assert conf_value("10") == 10
    assert conf_value("on") == "on"
