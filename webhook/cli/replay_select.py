"""`replay --webhook-config`: skip what the API server would not send, and say why.

Namespace labels come from the Namespace objects in `--objects` (`kubectl get ns -o yaml`); a
namespace that is not there is assumed to carry only `kubernetes.io/metadata.name`, which the
API server puts on every namespace, and replay warns once about it. The CEL library is imported
only with the flag: it costs a fifth of a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import yaml

from webhook.cli import UsageError
from webhook.cli.replay_inputs import Case
from webhook.sources.objects import expand_paths

if TYPE_CHECKING:
    from webhook.toolkit.admission_match import Decision, Webhook

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every namespace by the API server

NOT_SENT_KEY = "notSentToWebhook"  # what --expect stores for a review the API server keeps


def _documents(path: Path) -> list[Any]:
    try:
        return list(yaml.safe_load_all(path.read_bytes()))
    except OSError as err:
        raise UsageError(f"{path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{path}: not YAML: {err}") from None


class Selection:
    """What the API server decides before calling the webhook, for each replayed review."""

    def __init__(
        self, webhooks: tuple[Webhook, ...], namespaces: Sequence[Any], warn: Callable[[str], None]
    ) -> None:
        from webhook.toolkit.admission_match import namespace_labels_from

        self.webhooks = webhooks
        self.known = namespace_labels_from(list(namespaces))
        self.warn = warn
        self.assumed: set[str] = set()

    def _namespace_labels(self, name: str) -> dict[str, str]:
        labels = self.known(name)
        if labels is not None:
            return labels
        if name not in self.assumed:
            self.assumed.add(name)
            self.warn(
                f"--webhook-config: namespace {name} is not in --objects; assumed to have only "
                f"the {NAMESPACE_NAME_LABEL} label (add `kubectl get ns -o yaml` to --objects)"
            )
        return {NAMESPACE_NAME_LABEL: name}

    def decide(self, case: Case) -> Decision:
        from webhook.toolkit.admission_match import Decision, decide

        try:
            request = orjson.loads(case.body).get("request")
        except (orjson.JSONDecodeError, AttributeError):
            request = None
        if not isinstance(request, dict):
            return Decision(True)  # not a request: the pipeline reports it as the server would
        return decide(self.webhooks, request, self._namespace_labels)


def selection_from(
    config: str | None, objects: Sequence[str], warn: Callable[[str], None]
) -> Selection | None:
    """None without --webhook-config: every review is sent, as before."""
    if not config:
        return None
    from webhook.toolkit.admission_match import WebhookConfigError, load_webhooks

    path = Path(config)
    try:
        webhooks = load_webhooks(_documents(path), str(path))
    except WebhookConfigError as err:
        raise UsageError(f"--webhook-config: {err}") from None
    namespaces = [doc for file in expand_paths(objects) for doc in _documents(file)]
    return Selection(webhooks, namespaces, warn)


def not_sent_response(decision: Decision) -> dict[str, Any]:
    """The --expect record for a review the webhook never sees."""
    return {NOT_SENT_KEY: decision.describe()}
