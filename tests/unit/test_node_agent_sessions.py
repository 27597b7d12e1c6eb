"""The channels into a quarantined pod that packet filters do not see: which loopback
sockets are a port-forward's, and which processes are exec sessions (nodeagent/sessions.py)."""

from __future__ import annotations

import json
from pathlib import Path

from breaker.nodeagent import addresses, sessions
from breaker.nodeagent.sessions import Process, Socket

POD_NS, NODE_NS = "net:[4026532801]", "net:[4026531992]"
# In the pod's namespace: a port-forward (containerd, pid 900, dialled the pod's port
# 2222 on loopback; the pod's agent, pid 4242, accepted), the workload's own loopback
# connection (both ends its own), and a connection to the outside (not loopback).
SS = """\
0      0      127.0.0.1:38712   127.0.0.1:2222    users:(("containerd",pid=900,fd=55))
0      0      127.0.0.1:2222    127.0.0.1:38712   users:(("agent",pid=4242,fd=7))
0      0      127.0.0.1:6000    127.0.0.1:41000   users:(("trainer",pid=4300,fd=9))
0      0      127.0.0.1:41000   127.0.0.1:6000    users:(("trainer",pid=4301,fd=3))
0      0      [::1]:39000       [::1]:2222        users:(("containerd",pid=900,fd=56))
0      0      10.244.49.3:40190 198.51.100.4:22   users:(("agent",pid=4242,fd=8))
"""
OWNERS = {900: NODE_NS, 4242: POD_NS, 4300: POD_NS, 4301: POD_NS}


def test_a_port_forward_is_a_loopback_stream_held_from_outside_the_pod() -> None:
    found = sessions.parse_ss(SS)
    assert found[0] == Socket("127.0.0.1:38712", "127.0.0.1:2222", (900,))
    streams = sessions.port_forwards(found, OWNERS, POD_NS)
    # Both ends of the stream (the runtime's and the pod's), and the IPv6 one; never the
    # workload's own loopback connection, nor a connection that is not loopback.
    assert [(s.local, s.peer) for s in streams] == [
        ("127.0.0.1:38712", "127.0.0.1:2222"),
        ("[::1]:39000", "[::1]:2222"),
        ("127.0.0.1:2222", "127.0.0.1:38712"),
    ]
    assert sessions.kill_filter(streams[:1]) == "( src 127.0.0.1:38712 and dst 127.0.0.1:2222 )"


def test_no_stream_when_every_end_is_the_pods_own() -> None:
    own = [s for s in sessions.parse_ss(SS) if 900 not in s.pids]
    assert sessions.port_forwards(own, OWNERS, POD_NS) == []


def process(pid: int, ppid: int, cgroup: str, started: float, netns: str = POD_NS) -> Process:
    return Process(pid, ppid, netns, cgroup, started, f"cmd-{pid}")


def test_an_exec_is_a_second_process_started_from_outside_into_a_container() -> None:
    table = [
        process(1, 0, "host", 0.0, NODE_NS),
        process(800, 1, "shim", 10.0, NODE_NS),  # the shims, on the node
        process(801, 1, "shim", 10.0, NODE_NS),
        process(4000, 800, "pod/sandbox", 11.0),  # the pause process
        process(4242, 801, "pod/agent", 12.0),  # the container's first process
        process(4250, 4242, "pod/agent", 13.0),  # its child: not an exec
        process(5000, 801, "pod/agent", 100.0),  # kubectl exec ... sh
        process(5001, 5000, "pod/agent", 101.0),  # what the shell runs
        process(6000, 801, "other/agent", 100.0, "net:[999]"),  # another pod's
    ]
    found = sessions.exec_sessions(table, POD_NS)
    assert found == [sessions.Session(5000, "cmd-5000", 100.0)]
    # Two containers sharing the pod's process namespace: each has its own first process.
    table.append(process(4300, 801, "pod/sidecar", 12.5))
    assert [s.pid for s in sessions.exec_sessions(table, POD_NS)] == [5000]


def test_a_stat_line_with_spaces_and_parentheses_in_the_command() -> None:
    stat = "4242 (a (b) c) S 801 4242 4242 0 -1 4194560 " + " ".join(["0"] * 12) + " 1234 0 0"
    assert sessions.parse_stat(stat) == (801, 1234)


def test_a_pods_address_read_from_the_runtimes_record_never_loopback(tmp_path: Path) -> None:
    """libcni records each pod network it sets up, the runtime's loopback one too: the
    pod's address is its own network's, never 127.0.0.1 (cutting by it would cut the
    node's own connections)."""
    uid = "48543c23-95ce-41ee-93f5-8fde968a50d1"

    def record(name: str, ifname: str, address: str, pod_uid: str = uid) -> None:
        body = {
            "kind": "cniCacheV1",
            "ifName": ifname,
            "cniArgs": [["IgnoreUnknown", "1"], ["K8S_POD_UID", pod_uid]],
            "result": {"ips": [{"address": address}]},
        }
        (tmp_path / name).write_text(json.dumps(body))

    record("cni-loopback-abc-lo", "lo", "127.0.0.1/8")
    record("breaker-abc-eth0", "eth0", "10.244.219.26/24")
    record("breaker-def-eth0", "eth0", "10.244.219.27/24", pod_uid="other")
    (tmp_path / "half-written").write_text("{")
    records = addresses.CniRecords(tmp_path)
    assert records.addresses({uid}) == {uid: "10.244.219.26"}
    assert records.addresses({"other"}) == {"other": "10.244.219.27"}
    assert "half-written" not in records.read  # read again next time
    (tmp_path / "breaker-abc-eth0").unlink()  # the pod's network torn down
    assert records.addresses({uid}) == {}
    assert addresses.CniRecords(tmp_path / "absent").addresses({uid}) == {}
    for wrong in ("127.0.0.1", "169.254.1.1", "0.0.0.0", "::1", "nonsense", "", None):
        assert addresses.pod_address(wrong) is None, wrong
    assert addresses.pod_address("10.244.219.26") == "10.244.219.26"


def test_a_process_whose_parent_is_unknown_or_another_shims_is_never_a_session() -> None:
    """The parent went while the table was read, or the process was started by something
    else than the container's shim: left alone (nothing is ended on a guess). And what an
    exec started goes with it."""
    table = [
        process(800, 1, "shim", 10.0, NODE_NS),
        process(900, 1, "other", 10.0, NODE_NS),
        process(4242, 800, "pod/agent", 12.0),  # the container's first process
        process(5000, 800, "pod/agent", 100.0),  # an exec
        process(5001, 5000, "pod/agent", 101.0),  # its shell's child
        process(5002, 5001, "pod/agent", 102.0),  # and its grandchild
        process(6000, 777, "pod/agent", 100.0),  # its parent is gone
        process(6001, 900, "pod/agent", 100.0),  # started by another process outside
    ]
    assert [s.pid for s in sessions.exec_sessions(table, POD_NS)] == [5000]
    assert sessions.descendants(table, 5000) == [5002, 5001]
