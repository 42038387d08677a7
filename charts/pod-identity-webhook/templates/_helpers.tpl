{{/* vim: set filetype=mustache: */}}

{{- define "piw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "piw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The namespace of every namespaced object: namespaceOverride, else the release's. */}}
{{- define "piw.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
metadata.annotations of one object, called with (list $ <its own annotations>): its own
annotations over commonAnnotations; nothing when both are empty. Use as
{{- with include "piw.annotations" (list $ .Values.x.annotations) }}{{ . | nindent 2 }}{{ end }}
*/}}
{{- define "piw.annotations" -}}
{{- $ctx := index . 0 -}}
{{- $own := index . 1 | default dict -}}
{{- $all := merge (deepCopy $own) (deepCopy ($ctx.Values.commonAnnotations | default dict)) -}}
{{- with $all -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets then global.imagePullSecrets, each a name or {name: ...}, as a list of {name}. */}}
{{- define "piw.imagePullSecrets" -}}
{{- $out := list -}}
{{- range concat (.Values.imagePullSecrets | default list) ((.Values.global).imagePullSecrets | default list) -}}
{{- $entry := ternary (dict "name" .) . (kindIs "string" .) -}}
{{- if not (has $entry $out) -}}
{{- $out = append $out $entry -}}
{{- end -}}
{{- end -}}
{{- with $out -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{- define "piw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "piw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "piw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "piw.labels" -}}
helm.sh/chart: {{ include "piw.chart" . }}
{{ include "piw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: webhook
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "piw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "piw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The image reference. A repository whose first path component names a registry host (contains
"." or ":", or is "localhost", as Docker and the CRI read names) is used as given, so
`--set image.repository=registry.example.com/team/pod-identity-webhook` renders exactly that;
otherwise image.registry (when not empty) is put in front. A digest pins the image instead of the tag.
*/}}
{{- define "piw.image" -}}
{{- $img := .Values.image -}}
{{- $repo := $img.repository -}}
{{- $first := first (splitList "/" $repo) -}}
{{- $hasRegistry := and (contains "/" $repo) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $registry := default $img.registry (.Values.global).imageRegistry -}}
{{- if and $registry (not $hasRegistry) -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo -}}
{{- end -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $repo $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Name of the Secret holding tls.crt/tls.key that the Deployment mounts. Each mode has its own:
the Secrets of certManager and openshift are written by cert-manager / service-ca, not Helm,
and outlive a mode switch or an uninstall; sharing a name with the selfSigned Secret (which
Helm owns) would make `helm install/upgrade` refuse to adopt them.
*/}}
{{- define "piw.tlsSecretName" -}}
{{- $fullname := include "piw.fullname" . -}}
{{- if eq .Values.tls.mode "existingSecret" -}}
{{- required "tls.existingSecret.name is required when tls.mode=existingSecret" .Values.tls.existingSecret.name -}}
{{- else if eq .Values.tls.mode "certManager" -}}
{{- printf "%s-cert-manager-tls" $fullname | trunc 253 -}}
{{- else if eq .Values.tls.mode "openshift" -}}
{{- printf "%s-service-ca-tls" $fullname | trunc 253 -}}
{{- else -}}
{{- printf "%s-tls" $fullname -}}
{{- end -}}
{{- end -}}

{{/* DNS names the serving certificate must carry (Service name forms). */}}
{{- define "piw.serviceDNSNames" -}}
{{- $svc := include "piw.fullname" . -}}
{{- $ns := (include "piw.namespace" $) -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson -}}
{{- end -}}

{{/* Name of the ConfigMap holding the container-credentials identities file. */}}
{{- define "piw.containerCredentialsConfigMap" -}}
{{- default (printf "%s-container-credentials" (include "piw.fullname" .)) .Values.containerCredentials.existingConfigMap -}}
{{- end -}}

{{- define "piw.containerCredentialsDir" -}}
/etc/webhook/container-credentials
{{- end -}}

{{/* A user CA bundle, as base64 of PEM (accepts PEM or already-encoded input). */}}
{{- define "piw.userCABundle" -}}
{{- $ca := .Values.webhook.caBundle | trim -}}
{{- if contains "-----BEGIN" $ca -}}
{{- printf "%s\n" $ca | b64enc -}}
{{- else -}}
{{- $ca -}}
{{- end -}}
{{- end -}}

{{/*
Self-signed CA and serving certificate as a dict {ca.crt, tls.crt, tls.key} (base64).
An existing Secret from an earlier install is reused so the CA, and so the caBundle the API
server trusts, survive `helm upgrade`. Only call it once per render (see webhook.yaml).
*/}}
{{- define "piw.selfSignedTLS" -}}
{{- $secretName := include "piw.tlsSecretName" . -}}
{{- $namespace := include "piw.namespace" $ -}}
{{- $existing := lookup "v1" "Secret" $namespace $secretName -}}
{{- $data := dict -}}
{{- if $existing -}}
{{- $owner := (($existing.metadata).annotations | default dict) -}}
{{- if or (ne (index $owner "meta.helm.sh/release-name" | default "") .Release.Name) (ne (index $owner "meta.helm.sh/release-namespace" | default "") .Release.Namespace) -}}
{{- fail (printf "tls.mode=selfSigned: Secret %s/%s exists and is not this release's (a leftover of tls.mode=certManager or openshift in an earlier chart version, or made by hand): delete it with `kubectl -n %s delete secret %s` and retry" $namespace $secretName $namespace $secretName) -}}
{{- end -}}
{{- $data = $existing.data | default dict -}}
{{- end -}}
{{- if and (index $data "ca.crt") (index $data "tls.crt") (index $data "tls.key") -}}
{{- dict "ca.crt" (index $data "ca.crt") "tls.crt" (index $data "tls.crt") "tls.key" (index $data "tls.key") | toJson -}}
{{- else -}}
{{- $days := int .Values.tls.selfSigned.validityDays -}}
{{- $ca := genCA (printf "%s-ca" (include "piw.fullname" .)) $days -}}
{{- $dns := include "piw.serviceDNSNames" . | fromJsonArray -}}
{{- $cn := printf "%s.%s.svc" (include "piw.fullname" .) (include "piw.namespace" $) -}}
{{- $cert := genSignedCert $cn nil $dns $days $ca -}}
{{- dict "ca.crt" ($ca.Cert | b64enc) "tls.crt" ($cert.Cert | b64enc) "tls.key" ($cert.Key | b64enc) | toJson -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the `helm test` hook is rendered: tests.enabled true, or null (the default) and the
render can see the cluster (helm install/upgrade). `helm template`, `--dry-run=client` and the
GitOps tools that render with them cannot look anything up, so the hook stays out of what they
apply as plain objects (a test Namespace and Pod a GitOps tool would create and keep).
*/}}
{{- define "piw.renderTests" -}}
{{- $enabled := .Values.tests.enabled -}}
{{- if kindIs "invalid" $enabled -}}
{{- if lookup "v1" "Namespace" "" "kube-system" -}}true{{- end -}}
{{- else if $enabled -}}true{{- end -}}
{{- end -}}

{{/*
A securityContext map as YAML without its null entries: `runAsUser: null` in a values file
(OpenShift: let restricted-v2 pick the UID) leaves the field out instead of rendering a null.
*/}}
{{- define "piw.withoutNulls" -}}
{{- $out := dict -}}
{{- range $k, $v := . -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $_ := set $out $k $v -}}
{{- end -}}
{{- end -}}
{{- with $out -}}
{{- toYaml . -}}
{{- end -}}
{{- end -}}

{{/* "true" when the listeners get SO_REUSEPORT (config.reusePort, null: exactly with hostNetwork), else "". */}}
{{- define "piw.reusePort" -}}
{{- $reuse := .Values.config.reusePort -}}
{{- if kindIs "invalid" $reuse -}}
{{- $reuse = .Values.hostNetwork -}}
{{- end -}}
{{- if $reuse -}}true{{- end -}}
{{- end -}}

{{/* Validation of value combinations the schema cannot express. */}}
{{- define "piw.validate" -}}
{{- if and (not .Values.deployment.enabled) (not .Values.webhook.url) -}}
{{- fail "deployment.enabled=false needs webhook.url: the MutatingWebhookConfiguration would point at a Service with no pods" -}}
{{- end -}}
{{- if and (eq .Values.tls.mode "existingSecret") (not .Values.webhook.caBundle) -}}
{{- fail "tls.mode=existingSecret needs webhook.caBundle (the CA that signed the Secret's certificate)" -}}
{{- end -}}
{{- if and .Values.webhook.url (not .Values.deployment.enabled) (not .Values.webhook.caBundle) -}}
{{- fail "webhook.url with deployment.enabled=false needs webhook.caBundle (the CA of the external webhook's certificate)" -}}
{{- end -}}
{{- if and .Values.config.awsAccountId (not .Values.config.composeRoleArn) -}}
{{- fail "config.awsAccountId only applies with config.composeRoleArn=true" -}}
{{- end -}}
{{- if eq (int .Values.config.port) (int .Values.config.metricsPort) -}}
{{- fail "config.port and config.metricsPort must differ" -}}
{{- end -}}
{{- if and (gt (int .Values.preStopDelaySeconds) 0) (le (int .Values.terminationGracePeriodSeconds) (int .Values.preStopDelaySeconds)) -}}
{{- fail "terminationGracePeriodSeconds must exceed preStopDelaySeconds: the kubelet kills the container when the grace period ends, leaving no time to finish in-flight reviews after SIGTERM" -}}
{{- end -}}
{{- if and .Values.webhook.matchConditions (not (semverCompare ">=1.28-0" .Capabilities.KubeVersion.Version)) -}}
{{- fail "webhook.matchConditions needs Kubernetes >= 1.28 (beta, on by default; GA in 1.30)" -}}
{{- end -}}
{{- $a := .Values.autoscaling -}}
{{- if $a.enabled -}}
{{- if gt (int $a.minReplicas) (int $a.maxReplicas) -}}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" -}}
{{- end -}}
{{- if not ((.Values.resources).requests).cpu -}}
{{- fail "autoscaling.enabled needs resources.requests.cpu: the HPA's CPU utilization is a percentage of it" -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if and $pdb.enabled (kindIs "invalid" $pdb.maxUnavailable) (not (kindIs "string" $pdb.minAvailable)) (ge (int $pdb.minAvailable) (int $a.minReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas (%d) must exceed podDisruptionBudget.minAvailable (%d), or a scaled-in Deployment blocks every node drain" (int $a.minReplicas) (int $pdb.minAvailable)) -}}
{{- end -}}
{{- end -}}
{{- if eq .Values.podAntiAffinity "hard" -}}
{{- $s := .Values.deployment.strategy | default dict -}}
{{- $ru := $s.rollingUpdate | default dict -}}
{{- /* An absent maxUnavailable is the API's 25%, which rounds down to 0 below 4 replicas. */}}
{{- if and $s (eq (default "RollingUpdate" $s.type) "RollingUpdate") (has (toString (default "25%" $ru.maxUnavailable)) (list "0" "0%" "25%")) -}}
{{- fail "podAntiAffinity=hard with deployment.strategy.rollingUpdate.maxUnavailable=0 deadlocks a rollout on a pool with one node per replica (the surge pod has no node to go to): leave deployment.strategy empty (the chart then uses maxUnavailable=1, maxSurge=0), set maxUnavailable to 1, or use podAntiAffinity=soft" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.containerCredentials.enabled (not .Values.containerCredentials.existingConfigMap) (not .Values.containerCredentials.identities) -}}
{{- fail "containerCredentials.enabled needs containerCredentials.identities or containerCredentials.existingConfigMap" -}}
{{- end -}}
{{- end -}}

{{/*
config.tlsCipherSuites as the comma-separated Go (IANA) names the binary takes. OpenSSL names, as
OpenShift's TLS security profiles list them (`oc get apiserver cluster -o yaml`), are translated;
the DHE suites of those profiles have no Go equivalent and are dropped, as OpenShift's own
components (library-go) drop them. Any other name fails the render.
*/}}
{{- define "piw.tlsCipherSuites" -}}
{{- $openssl := dict
  "ECDHE-ECDSA-AES128-GCM-SHA256" "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
  "ECDHE-RSA-AES128-GCM-SHA256" "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
  "ECDHE-ECDSA-AES256-GCM-SHA384" "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
  "ECDHE-RSA-AES256-GCM-SHA384" "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
  "ECDHE-ECDSA-CHACHA20-POLY1305" "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
  "ECDHE-RSA-CHACHA20-POLY1305" "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
  "ECDHE-ECDSA-AES128-SHA256" "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256"
  "ECDHE-RSA-AES128-SHA256" "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256"
  "ECDHE-ECDSA-AES128-SHA" "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA"
  "ECDHE-RSA-AES128-SHA" "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA"
  "ECDHE-ECDSA-AES256-SHA" "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA"
  "ECDHE-RSA-AES256-SHA" "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA"
  "AES128-GCM-SHA256" "TLS_RSA_WITH_AES_128_GCM_SHA256"
  "AES256-GCM-SHA384" "TLS_RSA_WITH_AES_256_GCM_SHA384"
  "AES128-SHA256" "TLS_RSA_WITH_AES_128_CBC_SHA256"
  "AES128-SHA" "TLS_RSA_WITH_AES_128_CBC_SHA"
  "AES256-SHA" "TLS_RSA_WITH_AES_256_CBC_SHA"
  "DES-CBC3-SHA" "TLS_RSA_WITH_3DES_EDE_CBC_SHA"
-}}
{{- $dropped := list "DHE-RSA-AES128-GCM-SHA256" "DHE-RSA-AES256-GCM-SHA384" "DHE-RSA-CHACHA20-POLY1305" "DHE-RSA-AES128-SHA256" "DHE-RSA-AES256-SHA256" -}}
{{- $out := list -}}
{{- range .Values.config.tlsCipherSuites -}}
{{- if hasPrefix "TLS_" . -}}
{{- $out = append $out . -}}
{{- else if hasKey $openssl . -}}
{{- $out = append $out (index $openssl .) -}}
{{- else if not (has . $dropped) -}}
{{- fail (printf "config.tlsCipherSuites: unknown cipher suite %q (Go names such as TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, or OpenSSL names such as ECDHE-RSA-AES128-GCM-SHA256)" .) -}}
{{- end -}}
{{- end -}}
{{- $out | uniq | join "," -}}
{{- end -}}

{{/* The webhook's command-line flags, one YAML list item per line, pflag syntax. */}}
{{- define "piw.args" -}}
{{- $c := .Values.config -}}
- serve
- --in-cluster=false
- {{ printf "--port=%d" (int $c.port) | quote }}
- {{ printf "--metrics-port=%d" (int $c.metricsPort) | quote }}
{{- if include "piw.reusePort" . }}
- --reuse-port=true
{{- end }}
- --tls-cert=/etc/webhook/certs/tls.crt
- --tls-key=/etc/webhook/certs/tls.key
- {{ printf "--tls-min-version=%s" $c.tlsMinVersion | quote }}
{{- with include "piw.tlsCipherSuites" . }}
- {{ printf "--tls-cipher-suites=%s" . | quote }}
{{- end }}
- {{ printf "--namespace=%s" (include "piw.namespace" $) | quote }}
- {{ printf "--service-name=%s" (include "piw.fullname" .) | quote }}
- {{ printf "--annotation-prefix=%s" $c.annotationPrefix | quote }}
- {{ printf "--token-audience=%s" $c.tokenAudience | quote }}
- {{ printf "--token-mount-path=%s" $c.tokenMountPath | quote }}
- {{ printf "--token-expiration=%d" (int64 $c.tokenExpiration) | quote }}
{{- with $c.awsDefaultRegion }}
- {{ printf "--aws-default-region=%s" . | quote }}
{{- end }}
- {{ printf "--sts-regional-endpoint=%t" $c.stsRegionalEndpoint | quote }}
- {{ printf "--watch-config-map=%t" .Values.watchConfigMap.enabled | quote }}
{{- if $c.composeRoleArn }}
- --compose-role-arn=true
{{- with $c.awsAccountId }}
{{- /* A number from a values file arrives as a float64: print all 12 digits, leading zeros too. */}}
- {{ printf "--aws-account-id=%s" (ternary (printf "%012.0f" (float64 .)) (toString .) (or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .))) | quote }}
{{- end }}
{{- end }}
{{- with $c.awsPartition }}
- {{ printf "--aws-partition=%s" . | quote }}
{{- end }}
{{- if .Values.containerCredentials.enabled }}
{{- $cc := .Values.containerCredentials }}
- {{ printf "--watch-container-credentials-config=%s/config.json" (include "piw.containerCredentialsDir" .) | quote }}
- {{ printf "--container-credentials-audience=%s" $cc.audience | quote }}
- {{ printf "--container-credentials-token-mount-path=%s" $cc.tokenMountPath | quote }}
- {{ printf "--container-credentials-token-volume-name=%s" $cc.tokenVolumeName | quote }}
- {{ printf "--container-credentials-token-path=%s" $cc.tokenPath | quote }}
- {{ printf "--container-credentials-full-uri=%s" $cc.fullUri | quote }}
{{- end }}
{{- with $c.serviceAccountLookupGracePeriod }}
- {{ printf "--service-account-lookup-grace-period=%s" . | quote }}
{{- end }}
{{- with $c.resyncPeriod }}
- {{ printf "--resync-period=%s" . | quote }}
{{- end }}
{{- with $c.shutdownDelay }}
- {{ printf "--shutdown-delay=%s" . | quote }}
{{- end }}
{{- with $c.shutdownTimeout }}
- {{ printf "--shutdown-timeout=%s" . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $c.maxRequestBytes) }}
- {{ printf "--max-request-bytes=%d" (int64 $c.maxRequestBytes) | quote }}
{{- end }}
{{- if $c.enableDebuggingHandlers }}
- --enable-debugging-handlers=true
{{- end }}
{{- with $c.kubeconfig }}
- {{ printf "--kubeconfig=%s" . | quote }}
{{- end }}
{{- with $c.kubeApi }}
- {{ printf "--kube-api=%s" . | quote }}
{{- end }}
- {{ printf "--log-format=%s" $c.logFormat | quote }}
- {{ printf "--v=%d" (int $c.logLevel) | quote }}
{{- range $c.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end -}}


{{/*
The Deployment's strategy: deployment.strategy when given; otherwise RollingUpdate that never
drops below the replica count (maxUnavailable 0, maxSurge 1) or, with podAntiAffinity=hard,
one pod at a time (maxUnavailable 1, maxSurge 0): a required anti-affinity leaves a surge pod
no node on a pool with one node per replica, and the rollout would never finish.
*/}}
{{- define "piw.strategy" -}}
{{- with .Values.deployment.strategy -}}
{{- toYaml . -}}
{{- else -}}
{{- $hard := eq .Values.podAntiAffinity "hard" -}}
type: RollingUpdate
rollingUpdate:
  maxUnavailable: {{ ternary 1 0 $hard }}
  maxSurge: {{ ternary 0 1 $hard }}
{{- end -}}
{{- end -}}
