"""API discovery for the deny policies is asked once per process, not on every revoke and
restore; asked again when a CRD changes, when a served kind turns out gone, and after a
while. A fake API; no cluster."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes import client

from breaker.actions import admin_policy, discovery, executor
from breaker.api.policy import RevokeEgressAction

ANP = (admin_policy.ANP_GROUP, admin_policy.ANP_VERSION)
CILIUM = (admin_policy.CILIUM_GROUP, admin_policy.CILIUM_VERSION)


class FakeApis:
    """The API server's discovery, counting the calls; serves what ``groups`` holds."""

    def __init__(self, groups: list[tuple[str, str]]) -> None:
        self.groups = groups
        self.calls = 0

    def get_api_versions(self) -> Any:
        self.calls += 1
        return SimpleNamespace(
            groups=[
                SimpleNamespace(name=g, versions=[SimpleNamespace(version=v)])
                for g, v in self.groups
            ]
        )


class FakeObjects:
    """Creates and deletes of the deny policies; a create of a kind no longer served 404s."""

    def __init__(self, apis: FakeApis) -> None:
        self.apis = apis
        self.created: list[str] = []
        self.namespace_gone = False
        self.deleted: list[str] = []

    def _create(self, group: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        if (group, version) not in self.apis.groups:
            raise client.ApiException(status=404, reason="Not Found")
        self.created.append(body["kind"])
        return body

    def create_cluster_custom_object(self, group: str, version: str, _: str, body: Any) -> Any:
        return self._create(group, version, body)

    def create_namespaced_custom_object(
        self, group: str, version: str, _ns: str, _plural: str, body: Any
    ) -> Any:
        if self.namespace_gone:
            raise client.ApiException(status=404, reason="Not Found")
        return self._create(group, version, body)

    def delete_cluster_custom_object(self, *args: Any) -> None:
        self.deleted.append(args[2])

    def delete_namespaced_custom_object(self, *args: Any) -> None:
        self.deleted.append(args[3])


class FakeNetworking:
    def __getattr__(self, _: str) -> Any:
        return lambda *args, **kwargs: {}


@pytest.fixture
def apis(monkeypatch: pytest.MonkeyPatch) -> tuple[FakeApis, FakeObjects]:
    fake = FakeApis([ANP, CILIUM])
    objects = FakeObjects(fake)
    monkeypatch.setattr(discovery, "DISCOVERY", discovery.Discovery())
    monkeypatch.setattr(client, "ApisApi", lambda _api: fake)
    monkeypatch.setattr(client, "CustomObjectsApi", lambda _api: objects)
    monkeypatch.setattr(client, "NetworkingV1Api", lambda _api: FakeNetworking())
    monkeypatch.setattr(client, "CoreV1Api", lambda _api: FakeNetworking())
    return fake, objects


def scene() -> executor.Scene:
    return executor.Scene(None, "rl-guard", "team-a", None, [], [], [], [])  # type: ignore[arg-type]


async def test_several_revokes_and_restores_discover_once(
    apis: tuple[FakeApis, FakeObjects],
) -> None:
    fake, objects = apis
    for _ in range(3):
        changed = await executor.revoke_egress(scene(), RevokeEgressAction())
        assert changed["adminNetworkPolicy"]
        assert changed["ciliumPolicy"]
        await executor.restore_egress(scene(), changed)
    assert fake.calls == 1
    assert objects.created == ["AdminNetworkPolicy", "CiliumNetworkPolicy"] * 3
    assert objects.deleted == ["adminnetworkpolicies", "ciliumnetworkpolicies"] * 3


async def test_a_crd_change_makes_the_next_revoke_discover_again(
    apis: tuple[FakeApis, FakeObjects],
) -> None:
    fake, _ = apis
    fake.groups = []
    assert "adminNetworkPolicy" not in await executor.revoke_egress(scene(), RevokeEgressAction())
    fake.groups = [ANP]  # the network-policy API installed: its CRD's event says so
    discovery.forget()
    changed = await executor.revoke_egress(scene(), RevokeEgressAction())
    assert "adminNetworkPolicy" in changed
    assert "ciliumPolicy" not in changed
    assert fake.calls == 2


async def test_a_kind_gone_since_discovery_is_skipped_after_asking_again(
    apis: tuple[FakeApis, FakeObjects],
) -> None:
    fake, _ = apis
    await executor.revoke_egress(scene(), RevokeEgressAction())
    fake.groups = [ANP]  # Cilium uninstalled; nothing told this process yet
    changed = await executor.revoke_egress(scene(), RevokeEgressAction())
    assert "adminNetworkPolicy" in changed
    assert "ciliumPolicy" not in changed
    assert fake.calls == 2


async def test_a_404_from_a_kind_still_served_is_the_callers(
    apis: tuple[FakeApis, FakeObjects],
) -> None:
    fake, objects = apis
    objects.namespace_gone = True  # the kind is there; the object's namespace is not
    with pytest.raises(client.ApiException) as raised:
        await executor.revoke_egress(scene(), RevokeEgressAction())
    assert raised.value.status == 404
    assert fake.calls == 2  # asked again, and the API is still served


async def test_discovery_is_asked_again_after_a_while(apis: tuple[FakeApis, FakeObjects]) -> None:
    fake, _ = apis
    now = [0.0]
    cache = discovery.Discovery(clock=lambda: now[0])
    assert await cache.served(None, *ANP)  # type: ignore[arg-type]
    now[0] = discovery.REFRESH_SECONDS - 1
    assert await cache.served(None, *ANP)  # type: ignore[arg-type]
    assert fake.calls == 1
    fake.groups = []
    now[0] = discovery.REFRESH_SECONDS + 1
    assert not await cache.served(None, *ANP)  # type: ignore[arg-type]
    assert fake.calls == 2
