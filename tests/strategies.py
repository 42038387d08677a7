"""Hypothesis strategies shared by the property tests: pods with arbitrary extra fields at every
level the mutation touches, mutation settings, and bodies shaped more or less like reviews."""

from typing import Any

from hypothesis import strategies as st

from webhook.core.settings import MutationSettings

names = st.sampled_from(["app", "side", "init", "a b", "x/y", "~0"])
env_names = st.sampled_from(
    [
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "OTHER",
    ]
)
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
extra = st.dictionaries(
    st.sampled_from(["future", "restartPolicy", "x-unknown", "resizePolicy"]),
    json_value,
    max_size=2,
)


@st.composite
def containers(draw: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"name": draw(names), "image": "img", **draw(extra)}
    if draw(st.booleans()):
        c["env"] = [
            {"name": n, "value": "v", **draw(extra)} for n in draw(st.lists(env_names, max_size=4))
        ]
    if draw(st.booleans()):
        c["volumeMounts"] = [
            {"name": n, "mountPath": "/m"}
            for n in draw(st.lists(st.sampled_from(["aws-iam-token", "data"]), max_size=2))
        ]
    return c


@st.composite
def pods(draw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": "app",
        "containers": draw(st.lists(containers(), min_size=1, max_size=3)),
        **draw(extra),
    }
    if draw(st.booleans()):
        spec["initContainers"] = draw(st.lists(containers(), max_size=2))
    if draw(st.booleans()):
        spec["volumes"] = [
            {"name": n, "emptyDir": {}}
            for n in draw(st.lists(st.sampled_from(["aws-iam-token", "data"]), max_size=2))
        ]
    meta: dict[str, Any] = {"name": "p", **draw(extra)}
    if draw(st.booleans()):
        meta["annotations"] = {
            "eks.amazonaws.com/skip-containers": draw(
                st.sampled_from(["app", "side,init", '"a b"', 'bad"'])
            )
        }
    if draw(st.booleans()):
        meta["labels"] = {"app": "x"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, **draw(extra)}


SETTINGS = st.builds(
    MutationSettings,
    aws_default_region=st.sampled_from(["", "eu-west-1"]),
    sts_regional_endpoint=st.booleans(),
)


reviewish = st.fixed_dictionaries(
    {},
    optional={
        "apiVersion": st.sampled_from(["admission.k8s.io/v1", "admission.k8s.io/v1beta1", "x"]),
        "kind": st.sampled_from(["AdmissionReview", "Pod", ""]),
        "request": st.one_of(
            json_value,
            st.fixed_dictionaries(
                {},
                optional={
                    "uid": json_value,
                    "kind": st.one_of(
                        json_value, st.just({"group": "", "version": "v1", "kind": "Pod"})
                    ),
                    "namespace": st.one_of(json_value, st.just("default")),
                    "operation": st.sampled_from(["CREATE", "UPDATE", 3]),
                    "subResource": json_value,
                    "object": st.one_of(json_value, pods()),
                },
            ),
        ),
    },
)
