{{/* Names, labels, the rendered purge.toml and the container shared by both modes. */}}

{{- define "purge-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "purge-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "purge-service.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "purge-service.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "purge-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "purge-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "purge-service.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "purge-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "purge-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "purge-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "purge-service.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The store backend the config asks for ("memory" when unset). */}}
{{- define "purge-service.backend" -}}
{{- $store := default dict .Values.config.store }}
{{- default "memory" $store.backend }}
{{- end }}

{{/*
Render-time checks: more than one replica needs the Redis backend, which needs a URL.
*/}}
{{- define "purge-service.validate" -}}
{{- $backend := include "purge-service.backend" . }}
{{- $store := default dict .Values.config.store }}
{{- if eq .Values.mode "deployment" }}
{{- $most := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $most = int .Values.autoscaling.maxReplicas }}{{ end }}
{{- if and (gt $most 1) (ne $backend "redis") }}
{{- fail (printf "purge-service: %d replicas need config.store.backend \"redis\" (it is %q): on the memory backend every replica keeps its own queue and idempotency keys and spends the whole provider budget alone. Set config.store.backend: redis and a Redis URL, or replicaCount: 1 without autoscaling." $most $backend) }}
{{- end }}
{{- end }}
{{- if and (eq $backend "redis") (not (or $store.url $store.cluster_urls .Values.redis.url .Values.redis.urlKey)) }}
{{- fail "purge-service: config.store.backend \"redis\" needs a Redis URL: redis.url (with redis.passwordKey for the password), redis.urlKey (the whole URL in redis.existingSecret) or config.store.cluster_urls." }}
{{- end }}
{{- if and (or .Values.redis.passwordKey .Values.redis.urlKey) (not .Values.redis.existingSecret) }}
{{- fail "purge-service: redis.passwordKey and redis.urlKey name keys of redis.existingSecret, which is not set." }}
{{- end }}
{{- if and .Values.redis.passwordKey (not .Values.redis.url) }}
{{- fail "purge-service: redis.passwordKey needs redis.url (the URL without its password)." }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) }}
{{- fail "purge-service: tls.enabled needs tls.existingSecret (a kubernetes.io/tls Secret with tls.crt and tls.key, e.g. from cert-manager)." }}
{{- end }}
{{- end }}

{{/*
TOML from a dict, for purge.toml. Helm reads every YAML number as a float and its own toToml
writes 100 as "100.0" and 1000000 as "1e+06", which the service's integer settings refuse; this
writes whole numbers as integers. Scalars and lists of scalars first, then sub-tables, then arrays
of tables. Called with (dict "path" "" "table" $dict).
*/}}
{{- define "purge-service.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ printf "%d" (int64 $v) }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "slice" $v }}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "purge-service.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "purge-service.toml.key" $k }} = {{ include "purge-service.toml.value" (get $v $k) }}{{ end }} }
{{- else }}{{ fail (printf "purge-service: cannot write %v (%s) to purge.toml" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{- define "purge-service.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "purge-service.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $all := true }}
{{- range . }}{{ if not (kindIs "map" .) }}{{ $all = false }}{{ end }}{{ end }}
{{- if $all }}true{{ end }}
{{- end }}
{{- end }}

{{- define "purge-service.toml.table" -}}
{{- $path := .path }}
{{- $table := .table }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := get $table $k }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) (not (include "purge-service.toml.isTableArray" $v)) }}
{{ include "purge-service.toml.key" $k }} = {{ include "purge-service.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $table | sortAlpha }}
{{- $v := get $table $k }}
{{- $sub := ternary (include "purge-service.toml.key" $k) (printf "%s.%s" $path (include "purge-service.toml.key" $k)) (eq $path "") }}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "purge-service.toml.table" (dict "path" $sub "table" $v) }}
{{- else if include "purge-service.toml.isTableArray" $v }}
{{- range $item := $v }}

[[{{ $sub }}]]
{{- include "purge-service.toml.table" (dict "path" $sub "table" $item) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* purge.toml: the `config` value, with the drain timeout the chart derives its grace period from. */}}
{{- define "purge-service.purgeToml" -}}
{{- $config := deepCopy .Values.config }}
{{- $server := default dict $config.server }}
{{- $_ := set $server "drain_timeout" (printf "%ds" (int .Values.drainTimeoutSeconds)) }}
{{- with .Values.tls }}
{{- if .enabled }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" .mountPath) "key_file" (printf "%s/tls.key" .mountPath) "handshake_timeout" .handshakeTimeout }}
{{- if .clientCA.existingSecret }}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" .clientCA.mountPath .clientCA.key) }}
{{- $_ := set $tls "client_auth" .clientAuth }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- end }}
{{- end }}
{{- $_ := set $config "server" $server }}
# Rendered by the purge-service chart from its `config` value. The listen address comes from
# PURGE_SERVER__LISTEN, the Redis URL (when it holds a password) from PURGE_STORE__URL.
{{- include "purge-service.toml.table" (dict "path" "" "table" $config) }}
{{ end }}

{{- define "purge-service.configMapName" -}}
{{- printf "%s-config" (include "purge-service.fullname" .) }}
{{- end }}

{{/* Environment: listen address, Redis URL from a Secret, secret env vars, plain extras. */}}
{{- define "purge-service.env" -}}
- name: PURGE_SERVER__LISTEN
  value: {{ printf "%s:%d" .listenHost (int .root.Values.port) | quote }}
{{- if .root.Values.metrics.enabled }}
- name: PURGE_ADMIN__LISTEN
  value: {{ printf "%s:%d" .listenHost (int .root.Values.metrics.port) | quote }}
{{- end }}
{{- with .root.Values.redis }}
{{- if .urlKey }}
- name: PURGE_STORE__URL
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .urlKey | quote }}
{{- else if .passwordKey }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .passwordKey | quote }}
- name: PURGE_STORE__URL
  value: {{ regexReplaceAll "^(rediss?://)" .url "${1}:$(REDIS_PASSWORD)@" | quote }}
{{- else if .url }}
- name: PURGE_STORE__URL
  value: {{ .url | quote }}
{{- end }}
{{- end }}
{{- range .root.Values.secretEnv }}
- name: {{ .name | quote }}
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret | quote }}
      key: {{ .key | quote }}
{{- end }}
{{- range .root.Values.extraEnv }}
- name: {{ .name | quote }}
  value: {{ .value | quote }}
{{- end }}
{{- end }}

{{- define "purge-service.volumeMounts" -}}
- name: purge-config
  mountPath: /etc/purge
  readOnly: true
{{- range .Values.secretFiles }}
- name: {{ printf "secret-%s" .name | quote }}
  mountPath: {{ .mountPath | quote }}
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ .Values.tls.mountPath | quote }}
  readOnly: true
{{- if .Values.tls.clientCA.existingSecret }}
- name: tls-client-ca
  mountPath: {{ .Values.tls.clientCA.mountPath | quote }}
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{- define "purge-service.volumes" -}}
- name: purge-config
  configMap:
    name: {{ include "purge-service.configMapName" . | quote }}
{{- range .Values.secretFiles }}
- name: {{ printf "secret-%s" .name | quote }}
  secret:
    secretName: {{ .existingSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret | quote }}
    defaultMode: 0440
{{- if .Values.tls.clientCA.existingSecret }}
- name: tls-client-ca
  secret:
    secretName: {{ .Values.tls.clientCA.existingSecret | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end }}

{{/* `purge-service health` over TLS, for exec probes: trusts the serving certificate's CA and,
when client certificates are required, presents the serving certificate itself (issue it with the
client auth usage too). */}}
{{- define "purge-service.tlsProbeArgs" -}}
{{- $t := .Values.tls }}
{{- $args := list "--tls-ca" (printf "%s/%s" $t.mountPath $t.probe.caKey) "--tls-domain" (default (printf "%s.%s.svc" (include "purge-service.fullname" .) .Release.Namespace) $t.probe.serverName) }}
{{- if and $t.clientCA.existingSecret (eq $t.clientAuth "required") }}
{{- $args = concat $args (list "--cert" (printf "%s/tls.crt" $t.mountPath) "--key" (printf "%s/tls.key" $t.mountPath)) }}
{{- end }}
{{- toJson $args }}
{{- end }}

{{/* The purge-service container; listenHost is 0.0.0.0 (Deployment) or 127.0.0.1 (sidecar). */}}
{{- define "purge-service.container" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
name: {{ .name | default "purge-service" | quote }}
image: {{ include "purge-service.image" $root | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args: ["--config", "/etc/purge/purge.toml", "serve"]
env:
  {{- include "purge-service.env" . | nindent 2 }}
{{- if ne .listenHost "127.0.0.1" }}
ports:
  - name: grpc
    containerPort: {{ $v.port }}
    protocol: TCP
{{- if $v.metrics.enabled }}
  - name: metrics
    containerPort: {{ $v.metrics.port }}
    protocol: TCP
{{- end }}
{{- end }}
{{- $health := list "/usr/local/bin/purge-service" "health" "--addr" (printf "127.0.0.1:%d" (int $v.port)) "--timeout" "2s" }}
{{- if $v.tls.enabled }}
{{- $health = concat $health (include "purge-service.tlsProbeArgs" $root | fromJsonArray) }}
{{- end }}
{{- $exec := dict "exec" (dict "command" $health) }}
{{- if eq .listenHost "127.0.0.1" }}
{{- /* kubelet probes the pod IP, which a loopback listener does not answer: exec the image's own
health check. No liveness probe: it could only be the same check, and a Redis outage (NOT_SERVING)
must not restart the container; the process exits by itself on a fatal error. */}}
readinessProbe:
  {{- toYaml (merge (dict "timeoutSeconds" 3) $exec $v.probes.readiness) | nindent 2 }}
startupProbe:
  {{- toYaml (merge (dict "timeoutSeconds" 3) $exec $v.probes.startup) | nindent 2 }}
{{- else }}
{{- if $v.tls.enabled }}
{{- /* kubelet's gRPC probe cannot speak TLS: the image's own health check can. */}}
readinessProbe:
  {{- toYaml (merge (dict "timeoutSeconds" 3) $exec $v.probes.readiness) | nindent 2 }}
{{- else }}
readinessProbe:
  grpc:
    port: {{ $v.port }}
  {{- toYaml $v.probes.readiness | nindent 2 }}
{{- end }}
livenessProbe:
  tcpSocket:
    port: {{ $v.port }}
  {{- toYaml $v.probes.liveness | nindent 2 }}
startupProbe:
  tcpSocket:
    port: {{ $v.port }}
  {{- toYaml $v.probes.startup | nindent 2 }}
{{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
volumeMounts:
  {{- include "purge-service.volumeMounts" $root | nindent 2 }}
{{- end }}

{{/* The container as one list item (`- name: ...`), for `containers` or `initContainers`. */}}
{{- define "purge-service.containerItem" -}}
{{ include "purge-service.container" . | trim | indent 2 | trimPrefix "  " | printf "- %s" }}
{{- end }}
