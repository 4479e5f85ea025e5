"""NetworkPolicies: every connection a pod makes is allowed, and no more than those."""

from __future__ import annotations

from check_deploy.common import Problems
from check_deploy.manifests import Pod, find, selector_matches


def namespace_labels(objects: list[dict], namespace: str) -> dict:
    ns = find(objects, "Namespace", namespace)
    labels = dict((ns or {}).get("metadata", {}).get("labels", {}) or {})
    labels["kubernetes.io/metadata.name"] = namespace
    return labels


def ingress_allowed(source: Pod, target: Pod, port: int, objects: list[dict]) -> bool:
    policies = [o for o in objects if o.get("kind") == "NetworkPolicy"
                and o["metadata"].get("namespace", "default") == target.namespace
                and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])
                and selector_matches(o["spec"].get("podSelector", {}), target.labels)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(int(p.get("port", port)) == port for p in ports):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns_selector = peer.get("namespaceSelector")
                if ns_selector is not None:
                    if not selector_matches(ns_selector, namespace_labels(objects, source.namespace)):
                        continue
                elif source.namespace != target.namespace:
                    continue
                if "podSelector" in peer and not selector_matches(peer["podSelector"], source.labels):
                    continue
                return True
    return False


def check_least_privilege(pods: list[Pod], connections: dict[str, set[tuple[str, int]]], objects: list[dict],
                          problems: Problems) -> None:
    """A podSelector peer of an ingress rule must select only pods that use that access."""
    for policy in (o for o in objects if o.get("kind") == "NetworkPolicy"):
        targets = [p for p in pods if selector_matches(policy["spec"].get("podSelector", {}), p.labels)]
        for rule in policy["spec"].get("ingress") or []:
            rule_ports = {int(p["port"]) for p in rule.get("ports") or [] if "port" in p}
            for peer in rule.get("from") or []:
                if "namespaceSelector" in peer or "podSelector" not in peer:
                    continue
                for source in pods:
                    if not selector_matches(peer["podSelector"], source.labels):
                        continue
                    for target in targets:
                        if target is source:
                            continue
                        used = {port for name, port in connections.get(source.where, set()) if name == target.where}
                        if not used or (rule_ports and not used & rule_ports):
                            problems.add(f"NetworkPolicy/{policy['metadata']['name']}",
                                         f"lets {source.where} reach {target.where} on {sorted(rule_ports) or 'any port'}, "
                                         f"but it never connects there (remove the label that grants it)")
