{{/* Names and labels. */}}
{{- define "proxysession.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proxysession.fullname" -}}
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

{{- define "proxysession.selectorLabels" -}}
app.kubernetes.io/name: {{ include "proxysession.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "proxysession.labels" -}}
{{ include "proxysession.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "proxysession.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "proxysession.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "proxysession.valkeyName" -}}
{{- printf "%s-valkey" (include "proxysession.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "proxysession.headlessHost" -}}
{{- printf "%s-headless.%s.svc.%s" (include "proxysession.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{- define "proxysession.replicas" -}}
{{- if eq .Values.store.type "memory" -}}
{{- default 1 .Values.replicaCount -}}
{{- else -}}
{{- default 3 .Values.replicaCount -}}
{{- end -}}
{{- end -}}

{{/* The namespace of the proxies that call proxysession. */}}
{{- define "proxysession.proxyNamespace" -}}
{{- $m := .Values.integration.mode -}}
{{- if eq $m "istio-gateway" -}}{{ .Values.integration.istioGateway.namespace }}
{{- else if eq $m "istio-sidecar" -}}{{ .Values.integration.istioSidecar.namespace }}
{{- else if eq $m "envoy-gateway" -}}{{ default .Release.Namespace .Values.integration.envoyGateway.namespace }}
{{- end -}}
{{- end -}}

{{/* A Go duration of whole or fractional seconds ("5s", "0.2s", "1m") in seconds. */}}
{{- define "proxysession.seconds" -}}
{{- $d := toString . -}}
{{- if hasSuffix "ms" $d -}}{{ divf (trimSuffix "ms" $d | float64) 1000 }}
{{- else if hasSuffix "m" $d -}}{{ mulf (trimSuffix "m" $d | float64) 60 }}
{{- else if hasSuffix "s" $d -}}{{ trimSuffix "s" $d | float64 }}
{{- else -}}{{ fail (printf "%q: write durations in ms, s or m" $d) }}
{{- end -}}
{{- end -}}

{{/*
Checks run by every template that needs them (fail renders nothing).
*/}}
{{- define "proxysession.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.integration.mode (list "istio-gateway" "istio-sidecar" "envoy-gateway" "none")) -}}
{{- fail (printf "integration.mode %q: choose one of istio-gateway, istio-sidecar, envoy-gateway, none (one integration per release: two on one request path process every request twice)" (toString $v.integration.mode)) -}}
{{- end -}}
{{- if not (has $v.store.type (list "memory" "redis")) -}}
{{- fail (printf "store.type %q: memory or redis" $v.store.type) -}}
{{- end -}}
{{- if and (eq $v.store.type "memory") (gt (int (include "proxysession.replicas" .)) 1) -}}
{{- fail "store.type memory keeps sessions in the process: replicaCount must be 1 (use store.type redis to scale out)" -}}
{{- end -}}
{{- if eq $v.store.type "redis" -}}
{{- if and (not $v.store.redis.addr) (not $v.store.valkey.enabled) -}}
{{- fail "store.type redis: set store.redis.addr or store.valkey.enabled" -}}
{{- end -}}
{{- if and $v.store.redis.addr $v.store.valkey.enabled -}}
{{- fail "store.redis.addr and store.valkey.enabled: choose one" -}}
{{- end -}}
{{- if and $v.store.valkey.enabled (not $v.store.redis.existingSecret) -}}
{{- fail "store.valkey.enabled: set store.redis.existingSecret to a Secret holding the password (kubectl create secret generic NAME --from-literal=password=...)" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.store.type "memory") $v.store.valkey.enabled -}}
{{- fail "store.valkey.enabled needs store.type redis" -}}
{{- end -}}
{{- if eq $v.integration.mode "istio-sidecar" -}}
{{- if or (not $v.integration.istioSidecar.namespace) (not $v.integration.istioSidecar.selector) -}}
{{- fail "integration.mode istio-sidecar: set integration.istioSidecar.namespace and .selector (the workload's namespace and pod labels)" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.integration.mode "envoy-gateway") (not $v.integration.envoyGateway.targetRefs) -}}
{{- fail "integration.mode envoy-gateway: set integration.envoyGateway.targetRefs" -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- if and $v.tls.certManager.enabled (not $v.tls.certManager.issuerRef.name) -}}
{{- fail "tls.enabled with tls.certManager.enabled: set tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and (not $v.tls.certManager.enabled) (not $v.tls.serverSecret) -}}
{{- fail "tls.enabled without cert-manager: set tls.serverSecret" -}}
{{- end -}}
{{- end -}}
{{- $hc := $v.envoy.healthCheck -}}
{{- $detect := addf (mulf (include "proxysession.seconds" $hc.interval | float64) ($hc.unhealthyThreshold | float64)) 5.0 -}}
{{- if le (include "proxysession.seconds" $v.drain.delay | float64) $detect -}}
{{- fail (printf "drain.delay %s must be longer than envoy.healthCheck.interval x unhealthyThreshold + Envoy's DNS refresh of 5s (%vs): Envoy would still send streams to a pod that stopped accepting them" $v.drain.delay $detect) -}}
{{- end -}}
{{- if or (lt (int $v.goMemLimitPercent) 50) (gt (int $v.goMemLimitPercent) 95) -}}
{{- fail "goMemLimitPercent: between 50 and 95" -}}
{{- end -}}
{{- if include "proxysession.persistence" . -}}
{{- if eq (toString (default "" $v.podSecurityContext.fsGroupChangePolicy)) "Always" -}}
{{- fail "store.memory.persistence with podSecurityContext.fsGroupChangePolicy Always: the kubelet would make the state file group-readable at each mount, and proxysession refuses such a file (use OnRootMismatch, or store.memory.persistence.enabled: false)" -}}
{{- end -}}
{{- if kindIs "invalid" $v.podSecurityContext.fsGroup -}}
{{- fail "store.memory.persistence: set podSecurityContext.fsGroup (65532): the volume must be writable by proxysession's user" -}}
{{- end -}}
{{- $iv := toString $v.store.memory.persistence.interval -}}
{{- $tooShort := printf "store.memory.persistence.interval %s: 0 (only on shutdown) or at least 1s" $iv -}}
{{- if not (regexMatch "^(0|([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+)$" $iv) -}}
{{- fail (printf "store.memory.persistence.interval %q: a duration such as 1m, 30s or 0" $iv) -}}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?(ns|us|µs)$" $iv -}}
{{- if gt (regexReplaceAll "[^0-9.]" $iv "" | float64) 0.0 -}}{{- fail $tooShort -}}{{- end -}}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?(ms|s)$" $iv -}}
{{- $sec := include "proxysession.seconds" $iv | float64 -}}
{{- if and (gt $sec 0.0) (lt $sec 1.0) -}}{{- fail $tooShort -}}{{- end -}}
{{- end -}}
{{- end -}}
{{- if $v.tracing.enabled -}}
{{- if not $v.tracing.endpoint -}}
{{- fail "tracing.enabled: set tracing.endpoint to the OTLP collector (e.g. http://otel-collector.observability:4318)" -}}
{{- end -}}
{{- if not (has $v.tracing.protocol (list "http/protobuf" "grpc")) -}}
{{- fail (printf "tracing.protocol %q: http/protobuf or grpc" (toString $v.tracing.protocol)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the memory store keeps its sessions in a state file on a
volume (store.memory.persistence with store.type memory; the binary
refuses -state-file with -store redis), else "".
*/}}
{{- define "proxysession.persistence" -}}
{{- if and (eq .Values.store.type "memory") .Values.store.memory.persistence.enabled -}}true{{- end -}}
{{- end -}}

{{- define "proxysession.stateClaim" -}}
{{- default (printf "%s-state" (include "proxysession.fullname" .)) .Values.store.memory.persistence.existingClaim -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: drain + grace + admin shutdown (5s) + 5s,
and 10s more to write the state file (store.memory.persistence).
*/}}
{{- define "proxysession.terminationGrace" -}}
{{- $write := ternary 10 0 (eq (include "proxysession.persistence" .) "true") -}}
{{- addf (include "proxysession.seconds" .Values.drain.delay | float64) (include "proxysession.seconds" .Values.drain.shutdownGrace | float64) 10 $write | ceil | int -}}
{{- end -}}

{{/*
The headers proxysession reads (processor.ForwardedHeaders; a test keeps
them equal): ext_proc's forward_rules send Envoy's other headers
(Authorization, ...) nowhere.
*/}}
{{- define "proxysession.forwardedHeaders" -}}
{{- list ":scheme" ":authority" ":path" ":method" "host" "cookie" "x-forwarded-proto" "sec-fetch-site" "sec-fetch-mode" "sec-fetch-dest" "set-cookie" "clear-site-data" "cache-control" "proxysession-user" "proxysession-sid" "proxysession-logout" "proxysession-rotate" | toJson -}}
{{- end -}}

{{/* The ext_proc HTTP filter (an HttpFilter), for EnvoyFilter patches. */}}
{{- define "proxysession.extProcFilter" -}}
name: envoy.filters.http.ext_proc
typed_config:
  "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
  grpc_service:
    envoy_grpc:
      cluster_name: proxysession
  # Fail closed: if proxysession cannot be reached, Envoy answers 500
  # rather than pass backend cookies to browsers.
  failure_mode_allow: false
  message_timeout: {{ .Values.integration.messageTimeout }}
  processing_mode:
    request_header_mode: SEND
    response_header_mode: SEND
    request_body_mode: NONE
    response_body_mode: NONE
    request_trailer_mode: SKIP
    response_trailer_mode: SKIP
  forward_rules:
    allowed_headers:
      patterns:
      {{- range (include "proxysession.forwardedHeaders" . | fromJsonArray) }}
      - exact: {{ . | quote }}
      {{- end }}
{{- end -}}

{{/*
The proxysession cluster: proxysession's headless Service, so that every
ready pod is a host (a ClusterIP would be one host, and kube-proxy would pin
Envoy's few HTTP/2 connections to a few pods); gRPC health checks.
*/}}
{{- define "proxysession.envoyCluster" -}}
name: proxysession
type: STRICT_DNS
dns_lookup_family: V4_PREFERRED
connect_timeout: 0.25s
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    explicit_http_config:
      http2_protocol_options:
        connection_keepalive:
          interval: 30s
          timeout: 5s
# One ext_proc stream per HTTP request in flight: the default limit of
# 1024 requests would turn more traffic into 500s.
circuit_breakers:
  thresholds:
  - priority: DEFAULT
    max_connections: 1024
    max_pending_requests: 100000
    max_requests: 100000
    max_retries: 3
  - priority: HIGH
    max_connections: 1024
    max_pending_requests: 100000
    max_requests: 100000
    max_retries: 3
health_checks:
- timeout: {{ .Values.envoy.healthCheck.timeout }}
  interval: {{ .Values.envoy.healthCheck.interval }}
  unhealthy_threshold: {{ .Values.envoy.healthCheck.unhealthyThreshold }}
  healthy_threshold: 1
  grpc_health_check:
    service_name: envoy.service.ext_proc.v3.ExternalProcessor
{{- if .Values.tls.enabled }}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: {{ .Values.tls.serverName }}
    common_tls_context:
      alpn_protocols: ["h2"]
      tls_params:
        tls_minimum_protocol_version: TLSv1_2
      # Istio's proxies fetch kubernetes:// secrets of their own namespace
      # from istiod over SDS (ADS); the CA comes as <name>-cacert.
      tls_certificate_sds_secret_configs:
      - name: kubernetes://{{ .Values.tls.clientSecret }}
        sds_config:
          ads: {}
          resource_api_version: V3
      combined_validation_context:
        default_validation_context:
          match_typed_subject_alt_names:
          - san_type: DNS
            matcher:
              exact: {{ .Values.tls.serverName }}
        validation_context_sds_secret_config:
          name: kubernetes://{{ .Values.tls.clientSecret }}-cacert
          sds_config:
            ads: {}
            resource_api_version: V3
{{- end }}
load_assignment:
  cluster_name: proxysession
  endpoints:
  - lb_endpoints:
    - endpoint:
        address:
          socket_address:
            address: {{ include "proxysession.headlessHost" . }}
            port_value: 9002
{{- end -}}

{{- define "proxysession.serverSecret" -}}
{{- if .Values.tls.certManager.enabled -}}
{{- printf "%s-tls" (include "proxysession.fullname" .) -}}
{{- else -}}
{{- .Values.tls.serverSecret -}}
{{- end -}}
{{- end -}}

{{/* GOMEMLIMIT: goMemLimitPercent of resources.limits.memory, in MiB. */}}
{{- define "proxysession.goMemLimit" -}}
{{- $lim := required "resources.limits.memory is required (GOMEMLIMIT derives from it)" .Values.resources.limits.memory | toString -}}
{{- $bytes := 0.0 -}}
{{- if hasSuffix "Gi" $lim -}}{{- $bytes = mulf (trimSuffix "Gi" $lim | float64) 1073741824 -}}
{{- else if hasSuffix "Mi" $lim -}}{{- $bytes = mulf (trimSuffix "Mi" $lim | float64) 1048576 -}}
{{- else -}}{{- fail (printf "resources.limits.memory %q: write it in Mi or Gi" $lim) -}}
{{- end -}}
{{- printf "%dMiB" (divf (mulf $bytes .Values.goMemLimitPercent) 104857600 | floor | int) -}}
{{- end -}}

{{/* The gateway pods' labels: integration.istioGateway.selector, or istioctl's default. */}}
{{- define "proxysession.gatewaySelector" -}}
{{- toYaml (default (dict "istio" "ingressgateway") .Values.integration.istioGateway.selector) -}}
{{- end -}}
