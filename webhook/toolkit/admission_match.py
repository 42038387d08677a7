"""Would the API server send this request to the webhook? `--webhook-config` for replay.

Applies a MutatingWebhookConfiguration as k8s.io/apiserver v0.37 does in
`generic.Webhook.ShouldCallHook`, in its order: namespaceSelector, objectSelector, rules, then
matchConditions (CEL, evaluated by cel-python, the maintained CEL implementation on PyPI).
A matchCondition that fails to evaluate skips the webhook under `failurePolicy: Ignore` and
rejects the request under `Fail`, as the API server's compiled matcher does.

Not reproduced: the `authorizer` CEL variable (no authorizer offline; an expression that uses
it fails to evaluate) and Kubernetes' CEL extension libraries beyond the CEL standard ones.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server
NamespaceLabels = Callable[[str], Mapping[str, str]]


class WebhookConfigError(ValueError):
    """A configuration the API server would not have accepted, or no configuration at all."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        if self.operator == "In":
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # NotIn


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def parse_selector(value: Any, where: str) -> LabelSelector:
    """metav1.LabelSelectorAsSelector: matchLabels are `In` one value; null selects everything."""
    if value is None:
        return LabelSelector(())
    if not isinstance(value, dict):
        raise WebhookConfigError(f"{where}: not a label selector")
    found: list[Requirement] = []
    for key, label in (value.get("matchLabels") or {}).items():
        found.append(Requirement(str(key), "In", (str(label),)))
    for expression in value.get("matchExpressions") or []:
        if not isinstance(expression, dict) or not isinstance(expression.get("key"), str):
            raise WebhookConfigError(f"{where}: a matchExpression without a key")
        operator = expression.get("operator")
        values = tuple(str(v) for v in expression.get("values") or [])
        if operator in ("In", "NotIn") and not values:
            raise WebhookConfigError(f"{where}: {operator} for {expression['key']} needs values")
        if operator in ("Exists", "DoesNotExist") and values:
            raise WebhookConfigError(f"{where}: {operator} for {expression['key']} takes no values")
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise WebhookConfigError(f"{where}: unknown operator {operator!r}")
        found.append(Requirement(expression["key"], str(operator), values))
    return LabelSelector(tuple(found))


@dataclass(frozen=True, slots=True)
class Rule:
    operations: tuple[str, ...]
    groups: tuple[str, ...]
    versions: tuple[str, ...]
    resources: tuple[str, ...]
    scope: str

    def matches(self, request: Mapping[str, Any]) -> bool:
        resource = request.get("resource") or {}
        sub = request.get("subResource") or ""
        namespaced = bool(request.get("namespace"))
        if resource.get("resource") == "namespaces" and not sub:
            namespaced = False  # a Namespace carries its own name as its namespace
        scope_ok = self.scope == "*" or (self.scope == "Namespaced") == namespaced
        return (
            _one_of(self.operations, request.get("operation"))
            and _one_of(self.groups, resource.get("group", ""))
            and _one_of(self.versions, resource.get("version"))
            and any(_resource_matches(r, resource.get("resource"), sub) for r in self.resources)
            and scope_ok
        )


def _one_of(allowed: tuple[str, ...], value: Any) -> bool:
    return "*" in allowed or value in allowed


def _resource_matches(rule: str, resource: Any, sub: str) -> bool:
    # rules.Matcher.resource: "pods" is pods without subresource, "pods/*" any, "*/status" ...
    name, _, rule_sub = rule.partition("/")
    return name in ("*", resource) and rule_sub in ("*", sub)


@dataclass(frozen=True, slots=True)
class MatchCondition:
    name: str
    expression: str
    program: celpy.Runner


@dataclass(frozen=True, slots=True)
class Webhook:
    name: str
    rules: tuple[Rule, ...]
    namespace_selector: LabelSelector
    object_selector: LabelSelector
    match_conditions: tuple[MatchCondition, ...]
    fail_closed: bool  # failurePolicy Fail (the default in admissionregistration/v1)


@dataclass(frozen=True, slots=True)
class Decision:
    """`sent`, or why not: "namespaceSelector", "objectSelector", "rules", "matchConditions";
    `rejected`: the API server refuses the request itself (a failing matchCondition, Fail)."""

    sent: bool
    reason: str = ""
    detail: str = ""
    rejected: bool = False

    def describe(self) -> str:
        if self.rejected:
            return f"rejected by the API server: {self.detail}"
        if self.sent:
            return "sent to the webhook"
        detail = f" ({self.detail})" if self.detail else ""
        return f"not sent to the webhook: {self.reason}{detail}"


_ENVIRONMENT = celpy.Environment()


def _compile(condition: Any, where: str) -> MatchCondition:
    if not isinstance(condition, dict) or not isinstance(condition.get("expression"), str):
        raise WebhookConfigError(f"{where}: a matchCondition needs a name and an expression")
    name = str(condition.get("name") or "")
    try:
        program = _ENVIRONMENT.program(_ENVIRONMENT.compile(condition["expression"]))
    except CELParseError as err:
        raise WebhookConfigError(
            f"{where}: matchCondition {name!r} does not compile: {err}"
        ) from None
    return MatchCondition(name, condition["expression"], program)


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _webhook(entry: Any, where: str, default_policy: str) -> Webhook:
    if not isinstance(entry, dict):
        raise WebhookConfigError(f"{where}: not a webhook")
    name = str(entry.get("name") or "?")
    where = f"{where} {name}"
    rules = tuple(
        Rule(
            _strings(r.get("operations")),
            _strings(r.get("apiGroups")),
            _strings(r.get("apiVersions")),
            _strings(r.get("resources")),
            str(r.get("scope") or "*"),
        )
        for r in entry.get("rules") or []
        if isinstance(r, dict)
    )
    return Webhook(
        name,
        rules,
        parse_selector(entry.get("namespaceSelector"), f"{where} namespaceSelector"),
        parse_selector(entry.get("objectSelector"), f"{where} objectSelector"),
        tuple(_compile(c, where) for c in entry.get("matchConditions") or []),
        (entry.get("failurePolicy") or default_policy) != "Ignore",
    )


def load_webhooks(documents: list[Any], source: str) -> tuple[Webhook, ...]:
    """The webhooks of every MutatingWebhookConfiguration in the documents (a List is opened)."""
    found: list[Webhook] = []
    pending = list(documents)
    while pending:
        document = pending.pop(0)
        if not isinstance(document, dict):
            continue
        if document.get("kind") == "List":
            pending[:0] = document.get("items") or []
        elif document.get("kind") == "MutatingWebhookConfiguration":
            name = (document.get("metadata") or {}).get("name", "?")
            # admissionregistration/v1beta1 (served until 1.22) defaulted failurePolicy to Ignore.
            v1beta1 = str(document.get("apiVersion", "")).endswith("/v1beta1")
            for entry in document.get("webhooks") or []:
                found.append(_webhook(entry, f"{source}: {name}", "Ignore" if v1beta1 else "Fail"))
    if not found:
        raise WebhookConfigError(f"{source}: no MutatingWebhookConfiguration with webhooks")
    return tuple(found)


def _labels(value: Any) -> dict[str, str]:
    meta = value.get("metadata") if isinstance(value, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _evaluate(conditions: tuple[MatchCondition, ...], request: Mapping[str, Any]) -> Decision:
    """All must be true; any false skips the webhook; an error (and no false) fails."""
    attributes = {k: v for k, v in request.items() if k not in ("object", "oldObject")}
    activation = {
        "object": json_to_cel(request.get("object")),
        "oldObject": json_to_cel(request.get("oldObject")),
        "request": json_to_cel(attributes),
    }
    errors: list[str] = []
    for condition in conditions:
        try:
            result = condition.program.evaluate(activation)
        except CELEvalError as err:
            message = err.args[0] if err.args else str(err)
            errors.append(f"matchCondition {condition.name!r}: {message}")
            continue
        if not isinstance(result, celpy.celtypes.BoolType):
            errors.append(f"matchCondition {condition.name!r} is not a bool: {result!r}")
        elif not result:
            return Decision(False, "matchConditions", condition.name)
    if errors:
        return Decision(False, "matchConditions", "; ".join(errors), rejected=True)
    return Decision(True)


def decide_one(
    webhook: Webhook, request: Mapping[str, Any], namespace_labels: NamespaceLabels
) -> Decision:
    namespace = request.get("namespace") or ""
    resource = (request.get("resource") or {}).get("resource")
    if resource == "namespaces":
        ns_labels: Mapping[str, str] = _labels(request.get("object"))
    elif namespace:
        ns_labels = namespace_labels(namespace)
    else:
        ns_labels = {}
    if (namespace or resource == "namespaces") and not webhook.namespace_selector.matches(
        ns_labels
    ):
        return Decision(False, "namespaceSelector", f"namespace {namespace}")
    selector = webhook.object_selector
    if not selector.empty and not any(
        isinstance(o, dict) and selector.matches(_labels(o))
        for o in (request.get("object"), request.get("oldObject"))
    ):
        return Decision(False, "objectSelector")
    if not any(rule.matches(request) for rule in webhook.rules):
        return Decision(False, "rules")
    if webhook.match_conditions:
        decision = _evaluate(webhook.match_conditions, request)
        if decision.rejected and not webhook.fail_closed:
            return Decision(False, "matchConditions", f"{decision.detail}; failurePolicy Ignore")
        return decision
    return Decision(True)


def decide(
    webhooks: tuple[Webhook, ...], request: Mapping[str, Any], namespace_labels: NamespaceLabels
) -> Decision:
    """Sent if any webhook of the configuration would be called (each calls the same server)."""
    decisions = [decide_one(w, request, namespace_labels) for w in webhooks]
    for decision in decisions:
        if decision.rejected or decision.sent:
            return decision
    if len(decisions) == 1:
        return decisions[0]
    reasons = "; ".join(f"{w.name}: {d.reason}" for w, d in zip(webhooks, decisions, strict=True))
    return Decision(False, decisions[0].reason, reasons)


def namespace_labels_from(documents: list[Any]) -> Callable[[str], dict[str, str] | None]:
    """Namespace labels from objects (`kubectl get ns -o yaml` output); None when unknown."""
    known: dict[str, dict[str, str]] = {}
    pending = list(documents)
    while pending:
        document = pending.pop(0)
        if not isinstance(document, dict):
            continue
        if document.get("kind") == "List":
            pending[:0] = document.get("items") or []
        elif document.get("kind") == "Namespace":
            name = (document.get("metadata") or {}).get("name")
            if isinstance(name, str):
                known[name] = {**_labels(document), NAMESPACE_NAME_LABEL: name}
    return known.get
